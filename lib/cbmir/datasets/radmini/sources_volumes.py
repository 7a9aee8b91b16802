"""RadMini sources that are volumes, sliced into 2D: pyradiomics (lesion masks), Colin27, InVesalius, ITK."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cbmir.datasets.radmini.fetch import pyradiomics_data
from cbmir.datasets.radmini.lesions import slice_findings
from cbmir.datasets.radmini.render import CT, ROBUST, STORED, Item, SourceUnavailable, Window, orient_slice
from cbmir.datasets.radmini.volumes import Volume, read_inv3, read_nifti

MIN_CONTENT = 0.08  # fraction of the slice that must be body (CT > -500 HU; MR > 10 % of the volume's p99)

# pyradiomics 3.0.1 data: case -> (modality, region, window, slice step). Steps keep slices >= 4 mm apart.
PYRADIOMICS_CASES: dict[str, tuple[str, str, Window, int]] = {
    "lung1": ("CT", "lung", CT["lung"], 2),  # 5 mm slices -> every 10 mm
    "lung2": ("CT", "lung", CT["lung"], 2),
    "brain1": ("MR", "brain", ROBUST, 1),  # 6.5 mm slices
    "brain2": ("MR", "brain", ROBUST, 1),
    "breast1": ("MR", "breast", ROBUST, 1),  # 2.1 mm slices, all kept: the lesion spans 3 slices
}

MRICRON = Path("/usr/share/mricron/templates")
INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")

# AAL region name prefix -> coarse group (documented in the data card).
AAL_GROUPS: tuple[tuple[str, str], ...] = (
    (r"^(Precentral|Frontal|Rolandic|Supp_Motor|Olfactory|Rectus|Paracentral)", "frontal"),
    (r"^(Postcentral|Parietal|SupraMarginal|Angular|Precuneus)", "parietal"),
    (r"^(Temporal|Heschl|Hippocampus|ParaHippocampal|Amygdala|Fusiform)", "temporal"),
    (r"^(Occipital|Calcarine|Cuneus|Lingual)", "occipital"),
    (r"^(Insula|Cingulum)", "insula_cingulate"),
    (r"^(Caudate|Putamen|Pallidum|Thalamus)", "deep_grey"),
    (r"^(Cerebelum|Vermis)", "cerebellum"),
)


def _content(plane: np.ndarray, threshold: float) -> float:
    return float(np.mean(plane > threshold))


def _nrrd_volume(path: Path) -> Volume:
    import nrrd

    data, header = nrrd.read(str(path))
    directions = np.asarray(header.get("space directions"), dtype=float)
    sign = [int(np.sign(directions[i, i]) or 1) for i in range(3)]
    if str(header.get("space", "")).startswith("right-anterior"):
        sign = [-sign[0], -sign[1], sign[2]]
    spacing = tuple(float(np.linalg.norm(directions[i])) for i in range(3))
    return Volume(np.asarray(data), (sign[0], sign[1], sign[2]), spacing)


def _axial(vol: Volume, k: int, data: np.ndarray | None = None) -> np.ndarray:
    arr = vol.data if data is None else data
    return orient_slice(arr[:, :, k], flip_rows=vol.axis_sign[1] < 0, flip_cols=vol.axis_sign[0] < 0)


def _coronal(vol: Volume, j: int, data: np.ndarray | None = None) -> np.ndarray:
    arr = vol.data if data is None else data
    return orient_slice(arr[:, j, :], flip_rows=vol.axis_sign[2] > 0, flip_cols=vol.axis_sign[0] < 0)


def pyradiomics_items(cache: Path) -> Iterator[Item]:
    """Axial slices of the five pyradiomics volumes; lesion / normal from the mask on that slice."""
    folder = pyradiomics_data(cache)
    for case, (modality, region, window, step) in PYRADIOMICS_CASES.items():
        image, label = folder / f"{case}_image.nrrd", folder / f"{case}_label.nrrd"
        if not (image.is_file() and label.is_file()):
            raise SourceUnavailable(f"{image} or its label is missing from the pyradiomics archive")
        vol, mask = _nrrd_volume(image), _nrrd_volume(label)
        if vol.data.shape != mask.data.shape:
            raise ValueError(f"{label}: mask shape {mask.data.shape} differs from image {vol.data.shape}")
        threshold = -500.0 if modality == "CT" else 0.1 * float(np.percentile(vol.data, 99))
        sx, sy, sz = vol.spacing
        voxels = np.count_nonzero(mask.data, axis=(0, 1))
        findings = slice_findings(voxels * sx * sy, np.arange(len(voxels)) * sz)
        for k in range(0, vol.data.shape[2], step):
            plane = _axial(vol, k)
            if _content(plane, threshold) < MIN_CONTENT or findings[k] is None:
                continue
            yield Item(
                relpath=f"pyradiomics/{case}_z{k:03d}.png",
                pixels=plane.astype(np.float64),
                window=window,
                modality=modality,
                region=region,
                finding=findings[k],
                patient_id=f"pyradiomics:{case}",
                source="pyradiomics",
                source_file=f"data/{image.name}",
                frame_or_slice=k,
            )


def _aal_groups(txt: Path) -> dict[int, str]:
    groups: dict[int, str] = {}
    for line in txt.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        for pattern, group in AAL_GROUPS:
            if re.match(pattern, parts[1]):
                groups[int(parts[0])] = group
                break
    return groups


def _dominant(labels: np.ndarray, groups: dict[int, str]) -> tuple[str, float]:
    """The coarse AAL group covering most of the labelled voxels of a plane, and its share."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    totals: dict[str, int] = {}
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        totals[groups.get(int(v), "other")] = totals.get(groups.get(int(v), "other"), 0) + int(c)
    if not totals:
        return "", 0.0
    best = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return best[0], best[1] / sum(totals.values())


# (plane, step in mm) for Colin27; at 1 mm voxels the steps keep neighbours >= 6 mm apart.
COLIN_PLANES = (("axial", 6), ("coronal", 8))
MIN_ATLAS_FRACTION = 0.04  # a Colin27 slice must show at least this much AAL-labelled brain


def mricron_items() -> Iterator[Item]:
    """Colin27 T1 (mricron-data) axial and coronal slices; the dominant AAL lobe goes to `atlas_region`."""
    t1, aal, txt = MRICRON / "ch2.nii.gz", MRICRON / "aal.nii.gz", MRICRON / "aal.nii.txt"
    if not (t1.is_file() and aal.is_file() and txt.is_file()):
        raise SourceUnavailable(f"{MRICRON} lacks ch2/aal (apt-get install mricron-data)")
    vol, atlas, groups = read_nifti(t1), read_nifti(aal), _aal_groups(txt)
    if vol.data.shape != atlas.data.shape:
        raise ValueError(f"{aal}: atlas shape {atlas.data.shape} differs from {t1} {vol.data.shape}")
    for plane_name, step in COLIN_PLANES:
        axis = 2 if plane_name == "axial" else 1
        cut = _axial if plane_name == "axial" else _coronal
        for k in range(0, vol.data.shape[axis], step):
            labels = cut(atlas, k)
            if np.mean(labels > 0) < MIN_ATLAS_FRACTION:
                continue
            region, share = _dominant(labels, groups)
            yield Item(
                relpath=f"mricron/colin27_{plane_name}_{k:03d}.png",
                pixels=cut(vol, k).astype(np.float64),
                window=ROBUST,
                modality="MR",
                region="brain",
                finding="normal",
                patient_id="colin27",
                source="mricron",
                source_file=t1.name,
                frame_or_slice=f"{plane_name}:{k}",
                extra={"atlas_region": region, "atlas_share": f"{share:.2f}"},
            )


def invesalius_items(step: int = 5) -> Iterator[Item]:
    """Axial slices of the InVesalius head CT (1.5 mm slices, every `step`-th), brain window."""
    if not INVESALIUS.is_file():
        raise SourceUnavailable(f"{INVESALIUS} not found (apt-get install invesalius-examples)")
    matrix, meta = read_inv3(INVESALIUS)
    if str(meta.get("modality", "CT")) != "CT":
        raise ValueError(f"{INVESALIUS}: expected a CT project, got modality {meta.get('modality')!r}")
    for k in range(0, matrix.shape[0], step):
        plane = matrix[k].astype(np.float64)
        if _content(plane, -500.0) < MIN_CONTENT * 2:
            continue
        yield Item(
            relpath=f"invesalius/cranium_z{k:03d}.png",
            pixels=plane,
            window=CT["brain"],
            modality="CT",
            region="head",
            finding="normal",
            patient_id="invesalius:ProMED_CT_0051",
            source="invesalius",
            source_file=f"{INVESALIUS.name}:matrix.dat",
            frame_or_slice=k,
        )


# ITK example 2D slices. The 181x217 BrainWeb slices are simulated from the Colin27 anatomy, hence that patient.
ITK_SLICES = (
    ("BrainProtonDensitySlice.png", "colin27"),
    ("BrainT1Slice.png", "colin27"),
    ("BrainMidSagittalSlice.png", "colin27"),
)


def itk_items(step: int = 5) -> Iterator[Item]:
    """ITK example brain slices (PD, T1, mid-sagittal) and axial slices of the KmeansTest T1 volume."""
    if not ITK_DATA.is_dir():
        raise SourceUnavailable(f"{ITK_DATA} not found (apt-get install insighttoolkit5-examples)")
    for name, patient in ITK_SLICES:
        path = ITK_DATA / name
        if not path.is_file():
            continue
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("L"))
        yield Item(
            relpath=f"itk/{path.stem}.png",
            pixels=pixels,
            window=STORED,
            modality="MR",
            region="brain",
            finding="normal",
            patient_id=patient,
            source="itk",
            source_file=name,
        )
    path = ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"
    if path.is_file():
        vol = read_nifti(path)
        threshold = 0.1 * float(np.percentile(vol.data, 99))
        for k in range(0, vol.data.shape[2], step):
            plane = _axial(vol, k).astype(np.float64)
            if _content(plane, threshold) < MIN_CONTENT * 2:
                continue
            yield Item(
                relpath=f"itk/kmeans_t1_z{k:03d}.png",
                pixels=plane,
                window=ROBUST,
                modality="MR",
                region="brain",
                finding="normal",
                patient_id="itk:kmeans_t1",
                source="itk",
                source_file=path.name,
                frame_or_slice=k,
            )
