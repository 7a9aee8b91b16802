"""RadMini v2: near-duplicate grouping, cases, mask rules and the report cap, against slow references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cbmir.datasets.radmini import builder, card
from cbmir.datasets.radmini.dedup import PHASH_MAX_DISTANCE, components, hamming_pairs
from cbmir.datasets.radmini.lesions import (
    LESION_MARGIN_MM,
    MIN_LESION_AREA_MM2,
    polygon_mask,
    slice_findings,
)
from cbmir.manifest import row_labels
from cbmir.pipeline import subsample_per_class

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "data_splits" / "radmini.csv"


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _slow_pairs(hashes: list[int], t: int) -> set[tuple[int, int]]:
    return {
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= t
    }


def _slow_components(n: int, pairs) -> list[int]:
    adj: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in pairs:
        adj[a].add(b)
        adj[b].add(a)
    out = [-1] * n
    for start in range(n):
        if out[start] >= 0:
            continue
        seen, stack = {start}, [start]
        while stack:
            for nb in adj[stack.pop()]:
                if nb not in seen:
                    seen.add(nb)
                    stack.append(nb)
        for node in seen:
            out[node] = min(seen)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hamming_pairs_and_components_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    base = [int(x) for x in rng.integers(0, 2**63, size=60, dtype=np.uint64)]
    hashes = list(base)
    for h in base[:30]:  # plant near-duplicates at 0..10 flipped bits
        flips = rng.choice(64, size=int(rng.integers(0, 11)), replace=False)
        hashes.append(h ^ sum(1 << int(b) for b in flips))
    order = rng.permutation(len(hashes))
    hashes = [hashes[i] for i in order]
    for t in (0, 3, PHASH_MAX_DISTANCE, 10):
        fast = hamming_pairs(hashes, t)
        assert {tuple(p) for p in fast.tolist()} == _slow_pairs(hashes, t)
        assert components(len(hashes), fast).tolist() == _slow_components(len(hashes), fast.tolist())


def _row(fp, source, patient, label, phash, source_file=None):
    mod, reg, _ = label.split("/")
    return {
        "filepath": fp,
        "dataset": "radmini",
        "modality": mod,
        "anatomic_region": reg,
        "label": label,
        "patient_id": patient,
        "source": source,
        "source_file": source_file or fp,
        "frame_or_slice": "",
        "window": "",
        "atlas_region": "",
        "width": 8,
        "height": 8,
        "source_finding": "",
        "phash": f"{phash:016x}",
    }


def test_cross_package_duplicates_kept_once_and_groups_become_cases():
    rows = [
        _row("braintumor/Te-gl_1.png", "braintumor", "braintumor:Te-gl_1", "MR/brain/glioma", 0b1111),
        _row("br35h/yes/y1.png", "br35h", "br35h:yes/y1", "MR/brain/tumor", 0b0111),  # copy of Te-gl_1
        _row("br35h/yes/y2.png", "br35h", "br35h:yes/y2", "MR/brain/tumor", 0xFF00FF00),
        _row("br35h/yes/y3.png", "br35h", "br35h:yes/y3", "MR/brain/tumor", 0xFF00FF01),  # near-dup of y2
        _row("br35h/no/n1.png", "br35h", "br35h:no/n1", "MR/brain/normal", 0xFFFFFFFF0000),
        _row("br35h/no/n2.png", "br35h", "br35h:no/n2", "MR/brain/normal", 0x0F0F0F0F0F0F0F0F),
    ]
    df = builder.to_manifest(rows, seed=0)
    assert df.attrs["dropped"] == ["br35h/yes/y1.png"]
    assert "br35h/yes/y1.png" not in set(df["filepath"])
    kept = df.set_index("filepath")
    assert kept.loc["braintumor/Te-gl_1.png", "duplicates_dropped"] == "br35h:br35h/yes/y1.png"
    assert kept.loc["br35h/yes/y2.png", "patient_id"] == kept.loc["br35h/yes/y3.png", "patient_id"]
    assert kept.loc["br35h/yes/y2.png", "patient_id"] == "group:br35h:yes/y2"
    assert kept.loc["br35h/yes/y3.png", "dup_group"] == "br35h/yes/y2.png"
    assert kept.loc["br35h/no/n1.png", "patient_id"] == "br35h:no/n1"
    assert kept.loc["br35h/no/n1.png", "dup_group"] == ""
    assert kept.loc["br35h/yes/y2.png", "split"] == kept.loc["br35h/yes/y3.png", "split"]


def test_slice_findings_rule():
    z = np.arange(10) * 3.0  # 3 mm slices
    areas = np.zeros(10)
    areas[4] = MIN_LESION_AREA_MM2  # lesion
    areas[5] = MIN_LESION_AREA_MM2 - 1  # edge: left out
    got = slice_findings(areas, z)
    for k, f in enumerate(got):
        nearest = min(abs(z[k] - z[4]), abs(z[k] - z[5]))
        if k == 4:
            assert f == "lesion"
        elif k == 5 or nearest <= LESION_MARGIN_MM:
            assert f is None, k
        else:
            assert f == "normal", k
    assert slice_findings([0.0, 0.0], [0.0, 1.0]) == ["normal", "normal"]
    with pytest.raises(ValueError, match="differ"):
        slice_findings([1.0], [0.0, 1.0])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_polygon_mask_agrees_with_point_in_polygon_away_from_the_outline(seed):
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(seed)
    origin = rng.uniform(-200, 200, size=2)
    spacing = rng.uniform(0.5, 1.5, size=2)  # (row, column) spacing
    shape = (60, 50)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=9))
    radius = rng.uniform(8, 20, size=9)
    centre_px = np.array([25.0, 30.0])  # (col, row)
    cols = centre_px[0] + radius * np.cos(angles)
    rows = centre_px[1] + radius * np.sin(angles)
    pts_mm = np.stack([origin[0] + cols * spacing[1], origin[1] + rows * spacing[0]], axis=1)
    mask = polygon_mask(pts_mm, origin, spacing, shape)
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack([cc.ravel(), rr.ravel()], axis=1).astype(float)
    verts = np.stack([cols, rows], axis=1)
    contained = MplPath(verts).contains_points(centres).reshape(shape)
    a, b = verts, np.roll(verts, -1, axis=0)  # edges a -> b
    ab = b - a
    t = np.clip(((centres[:, None, :] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    dist = np.linalg.norm(centres[:, None, :] - (a + t[..., None] * ab), axis=-1).min(axis=1).reshape(shape)
    inside = contained & (dist > 1.5)  # well inside the outline
    outside = ~contained & (dist > 1.5)  # well outside
    assert mask[inside].all() and not mask[outside].any()
    assert inside.sum() > 20


def _cap_reference(df: pd.DataFrame, n: int) -> dict[tuple[str, str], int]:
    """For each (split, label): the number of distinct cases a cap of n should keep (min(n, cases))."""
    labels = row_labels(df, "label")
    out = {}
    for (split, label), sub in df.assign(label_=labels).groupby(["split", "label_"]):
        out[(split, label)] = min(n, sub["patient_id"].nunique())
    return out


@pytest.mark.parametrize("n", [1, 2, 5])
def test_cap_is_seeded_case_aware_and_order_independent(n):
    rng = np.random.default_rng(n)
    m = 400
    labels = rng.choice(["MR/brain/a", "MR/brain/b", "CT/lung/c"], size=m)
    df = pd.DataFrame(
        {
            "filepath": [f"img{i:04d}.png" for i in range(m)],
            "dataset": "t",
            "split": rng.choice(["train", "val", "test"], size=m),
            "modality": [lab.split("/")[0] for lab in labels],
            "anatomic_region": [lab.split("/")[1] for lab in labels],
            "patient_id": [f"p{int(v)}" for v in rng.integers(0, 40, size=m)],
        }
    )
    for lab in sorted(set(labels)):
        df[lab] = (labels == lab).astype(int)
    a = subsample_per_class(df, n, seed=0)
    shuffled = df.sample(frac=1, random_state=3).reset_index(drop=True)
    assert sorted(a["filepath"]) == sorted(subsample_per_class(shuffled, n, seed=0)["filepath"])
    assert a["filepath"].tolist() == sorted(a["filepath"])  # manifest order kept
    ref = _cap_reference(df, n)
    got_labels = row_labels(a, "label")
    for (split, label), cases in ref.items():
        sub = a[(a["split"] == split) & (got_labels == label)]
        total = int(((df["split"] == split) & (labels == label)).sum())
        assert len(sub) == min(n, total)
        assert sub["patient_id"].nunique() == cases, (split, label)
    other = subsample_per_class(df, n, seed=1)
    assert len(other) == len(a)
    if n == 1:
        assert sorted(other["filepath"]) != sorted(a["filepath"])
    with pytest.raises(ValueError, match="max_per_class"):
        subsample_per_class(df, 0)


def test_report_config_cap_matches_the_card():
    cfg = yaml.safe_load((ROOT / "configs" / "radmini.yaml").read_text())
    assert cfg["max_per_class"] == card.REPORT_MAX_PER_CLASS
    df = _read(MANIFEST)
    sub = subsample_per_class(df, card.REPORT_MAX_PER_CLASS, seed=cfg.get("seed", 0))
    per_image = sum(1.0 / v for v in card.EXTRACTION_SPEEDS.values()) + card.FAST_MODELS_S_PER_IMAGE
    assert len(sub) * per_image <= card.EXTRACTION_BUDGET_S
