"""The decode cache: models that resize alike share decoded pixels, and the vectors stay those of a decode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cbmir import images as cbmir_images
from cbmir.decode_cache import DecodeCache, geometry_key
from cbmir.extract import extract_embeddings
from cbmir.models.base import Encoder
from cbmir.models.transforms import GreyFirst, Preprocess
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _embed_worker import DIM, _Tiny, tiny_encoder  # noqa: E402

GEOMETRY = {"resize": 20, "resize_mode": "shortest", "interpolation": "bicubic", "crop": 16}


def encoder(spec: str, **settings) -> Encoder:
    """The tiny seeded module behind a `Preprocess` with GEOMETRY and the given scale / normalisation."""
    torch.manual_seed(0)
    return Encoder(spec, _Tiny(), Preprocess({**GEOMETRY, **settings}), DIM, "tiny", {})


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Greyscale and colour PNG/JPEG files of assorted sizes, and a corrupt one."""
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        shape = (30 + i, 41 - i) if i % 3 else (33, 27, 3)
        name = f"img{i:02d}." + ("jpg" if i % 2 else "png")
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
        names.append(name)
    (root / "corrupt.png").write_bytes(b"not an image")
    names.insert(5, "corrupt.png")
    return root, pd.DataFrame({"filepath": names})


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file `load_image` opens (in this process: the tests run with num_workers=0)."""
    opened: list[str] = []
    real = cbmir_images.load_image

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cbmir_images, "load_image", counting)
    return opened


def run(images, enc: Encoder, out: Path, cache: Path | None):
    root, manifest = images
    return extract_embeddings(manifest, root, enc, out, batch_size=4, num_workers=0, decode_cache=cache)


def test_split_transforms_compose_to_the_whole_transform() -> None:
    from torchvision import transforms as T

    rng = np.random.default_rng(1)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (37, 23), dtype=np.uint8)),
        Image.new("RGB", (19, 40), "teal"),
    ]
    compose = T.Compose([T.Resize(21), T.CenterCrop(17), T.ToTensor(), T.Normalize([0.3] * 3, [0.2] * 3)])
    for transform in (Preprocess(GEOMETRY), GreyFirst(compose)):
        for picture in pictures:
            pixels = transform.geometry(picture)
            assert (
                pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[0] == len(picture.getbands())
            )
            torch.testing.assert_close(transform.finish(pixels), compose(picture.convert("RGB")) if isinstance(
                transform, GreyFirst) else transform(picture), rtol=0, atol=0)  # fmt: skip
    assert geometry_key(Preprocess({**GEOMETRY, "mean": [0.1] * 3, "std": [0.2] * 3})) == geometry_key(
        Preprocess(GEOMETRY)
    )  # normalisation is not part of the key
    assert geometry_key(Preprocess({**GEOMETRY, "crop": 15})) != geometry_key(Preprocess(GEOMETRY))
    assert geometry_key(GreyFirst(T.Compose([T.ToTensor()]))) is None  # nothing to cache
    assert geometry_key(lambda image: image) is None


def test_a_second_model_that_resizes_alike_reads_the_cache_and_gets_the_same_vectors(
    images, decodes, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    plain = run(images, encoder("a"), tmp_path / "plain", None)
    del decodes[:]
    first = run(images, encoder("a"), tmp_path / "first", cache)
    assert sorted(decodes) == sorted(images[1]["filepath"])  # every file decoded once (and stored)
    del decodes[:]
    other = encoder("b", mean=[0.4, 0.5, 0.6], std=[0.3, 0.2, 0.1])
    second = run(images, other, tmp_path / "second", cache)
    assert decodes == ["corrupt.png"]  # only the file with no entry is opened again
    np.testing.assert_array_equal(np.asarray(first.embeddings), np.asarray(plain.embeddings))
    reference = run(images, encoder("b", mean=[0.4, 0.5, 0.6], std=[0.3, 0.2, 0.1]), tmp_path / "ref", None)
    np.testing.assert_array_equal(np.asarray(second.embeddings), np.asarray(reference.embeddings))
    assert second.failed["filepath"].tolist() == ["corrupt.png"]
    recorded = second.provenance["decode_cache"]
    assert (
        recorded["key"]["geometry"] == geometry_key(other.transform)
        and Path(recorded["folder"]).parent == cache
    )
    assert set(recorded["key"]["decoders"]) == {"cbmir", "pillow", "torchvision", "pydicom", "numpy"}
    assert plain.provenance["decode_cache"] == "off"


def test_a_changed_file_is_decoded_afresh_and_a_damaged_entry_is_rebuilt(
    images, decodes, tmp_path: Path
) -> None:
    root, manifest = images
    cache = tmp_path / "cache"
    run(images, encoder("a"), tmp_path / "first", cache)
    Image.new("L", (25, 25), 200).save(root / "img04.png")  # same name, new content
    damaged = DecodeCache(cache, encoder("a").transform).entry((root / "img07.jpg").resolve(), None)
    damaged.write_bytes(b"\x93NUMPY truncated")
    del decodes[:]
    again = run(images, encoder("a"), tmp_path / "again", cache)
    assert (
        "img04.png" in decodes and len(decodes) == 3
    )  # the changed file, the damaged entry's, the corrupt one
    fresh = run(images, encoder("a"), tmp_path / "fresh", None)
    np.testing.assert_array_equal(np.asarray(again.embeddings), np.asarray(fresh.embeddings))
    assert DecodeCache(cache, encoder("a").transform).read(damaged) is not None  # rewritten whole


def test_a_cache_that_cannot_be_written_costs_only_the_decode(images, tmp_path: Path, monkeypatch) -> None:
    def full(self, entry, pixels):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DecodeCache, "write", full)
    store = run(images, encoder("a"), tmp_path / "out", tmp_path / "cache")
    fresh = run(images, encoder("a"), tmp_path / "fresh", None)
    np.testing.assert_array_equal(np.asarray(store.embeddings), np.asarray(fresh.embeddings))


def test_unusable_cache_settings_are_named(images, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"parameter 'decode_cache' .*a-file"):
        run(images, encoder("a"), tmp_path / "out", blocker)
    store = run(images, tiny_encoder(), tmp_path / "tiny", tmp_path / "cache")  # a plain function: no split
    assert store.provenance["decode_cache"].startswith("not used: the function transform")
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_workers_share_the_cache(images, tmp_path: Path) -> None:
    """DataLoader workers (separate processes) write entries that a later run reads."""
    cache = tmp_path / "cache"
    root, manifest = images
    first = extract_embeddings(manifest, root, encoder("a"), tmp_path / "w", batch_size=4, num_workers=1,
                               decode_cache=cache)  # fmt: skip
    assert len(list(cache.rglob("*.npy"))) == 12
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    stamps = {p: os.stat(p).st_mtime_ns for p in cache.rglob("*.npy")}
    second = run(images, encoder("a"), tmp_path / "again", cache)
    assert {p: os.stat(p).st_mtime_ns for p in cache.rglob("*.npy")} == stamps  # read, not rewritten
    np.testing.assert_array_equal(np.asarray(first.embeddings), np.asarray(second.embeddings))


def test_an_upgrade_of_the_decoders_starts_a_new_key_folder(tmp_path: Path, monkeypatch) -> None:
    import cbmir.decode_cache as dc

    before = DecodeCache(tmp_path, encoder("a").transform).folder
    monkeypatch.setattr(dc, "decoder_versions", lambda: {"pillow": "99.0"})
    after = DecodeCache(tmp_path, encoder("a").transform)
    assert after.folder != before and after.key["decoders"] == {"pillow": "99.0"}
