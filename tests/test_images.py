"""Image loading: real DICOMs from pydicom-data, small files written here, and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cbmir.images import ImageLoadError, dicom_to_array, dicom_to_uint8, load_image, read_dicom, to_uint8
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def _dicom(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data file {name} not found"
    return str(path)


def _grey(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0]


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str, **attrs: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ to_uint8
def test_to_uint8_window_and_robust_range() -> None:
    values = np.array([-1000.0, 0.0, 50.0, 100.0, 3000.0])
    out = to_uint8(values, window=(50, 100)).tolist()
    assert out[:2] == [0, 0] and out[2] in (127, 128) and out[3:] == [255, 255]
    ramp = np.concatenate([np.linspace(0, 1000, 1000), [1e6]])  # one hot-pixel outlier
    out = to_uint8(ramp)
    assert out[0] == 0 and out[-1] == 255 and out[500] > 100  # the outlier does not squash the ramp
    assert to_uint8(np.full((3, 3), 7.0)).tolist() == np.zeros((3, 3), np.uint8).tolist()
    assert to_uint8(np.array([np.nan, 0.0, 1.0])).dtype == np.uint8
    with pytest.raises(ValueError, match="window width"):
        to_uint8(values, window=(0, 0))


# ------------------------------------------------------------------------------------------- real DICOMs
def test_ct_rescale_is_applied_before_windowing() -> None:
    ds = read_dicom(_dicom("CT_small.dcm"))
    hu = dicom_to_array(ds)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.dtype == np.float64 and np.allclose(hu, expected) and float(ds.RescaleIntercept) != 0
    grey = _grey(load_image(_dicom("CT_small.dcm")))
    assert grey.shape == (128, 128) and np.array_equal(grey, to_uint8(hu))  # no window in the file
    brain = dicom_to_uint8(ds, window=(40, 80))
    assert np.array_equal(brain, to_uint8(hu, window=(40, 80)))


def test_file_window_is_used_when_present() -> None:
    ds = read_dicom(_dicom("MR_small.dcm"))
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values, grey = dicom_to_array(ds), _grey(load_image(_dicom("MR_small.dcm")))
    assert (grey[values >= center + width / 2] == 255).all()
    assert (grey[values <= center - width / 2] == 0).all()
    assert not np.array_equal(grey, to_uint8(values))  # different from the no-window fallback


def test_monochrome1_is_inverted() -> None:
    ds = read_dicom(_dicom("RG1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    as_stored = dicom_to_uint8(ds)
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(as_stored.astype(int), 255 - dicom_to_uint8(ds).astype(int))


def test_written_monochrome1_without_window(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 60
    path = _write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    grey = _grey(load_image(path))
    assert grey[0, 0] == 255 and grey[-1, -1] == 0  # the highest stored value is the darkest
    assert (np.diff(grey.ravel().astype(int)) <= 0).all()


def test_dicom_found_by_marker_without_suffix(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    path = _write_dicom(tmp_path / "IM0001", pixels, "MONOCHROME2", WindowCenter=32, WindowWidth=64)
    grey = _grey(load_image(path))
    assert grey[0, 0] == 0 and grey[-1, -1] == 255


def test_colour_dicoms_rgb_and_ybr() -> None:
    rgb = np.asarray(load_image(_dicom("US1_UNCR.dcm")))
    assert rgb.shape == (480, 640, 3) and np.array_equal(rgb, read_dicom(_dicom("US1_UNCR.dcm")).pixel_array)
    assert not np.array_equal(rgb[..., 0], rgb[..., 2])  # colour kept
    j2k_ybr = np.asarray(load_image(_dicom("US1_J2KR.dcm")))  # lossless JPEG 2000, YBR_RCT
    assert np.array_equal(j2k_ybr, rgb)
    ybr = np.asarray(load_image(_dicom("SC_ybr_full_uncompressed.dcm"))).astype(int)
    reference = np.asarray(load_image(_dicom("SC_rgb.dcm"))).astype(int)
    assert np.abs(ybr - reference).max() <= 8  # YBR_FULL converted to RGB (rounding only)


def test_sixteen_bit_colour_dicom_is_scaled() -> None:
    out = np.asarray(load_image(_dicom("SC_rgb_rle_16bit.dcm"))).astype(int)
    eight = np.asarray(load_image(_dicom("SC_rgb.dcm"))).astype(int)
    assert np.abs(out - eight).max() <= 1


def test_multiframe_default_is_middle_frame() -> None:
    path = _dicom("emri_small.dcm")
    ds = read_dicom(path)
    assert int(ds.NumberOfFrames) == 10
    middle = np.asarray(load_image(path))
    assert np.array_equal(middle, np.asarray(load_image(path, frame=5)))
    assert not np.array_equal(middle, np.asarray(load_image(path, frame=0)))
    assert np.array_equal(dicom_to_array(ds, 2), ds.pixel_array[2].astype(np.float64))
    with pytest.raises(ImageLoadError, match=r"emri_small\.dcm.*frame 10 out of range.*10 frame"):
        load_image(path, frame=10)


# -------------------------------------------------------------------------------------- PNG, JPEG, TIFF
def test_png_8bit_grey_rgb_and_rgba(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert np.array_equal(_grey(load_image(tmp_path / "g.png")), grey)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "c.png")), rgb)
    rgba = np.dstack([rgb, np.full((9, 7), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png")), rgb)


def test_png_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16).astype(np.uint16)  # 0..4080, 12-bit data
    Image.fromarray(ramp).save(tmp_path / "r16.png")
    assert Image.open(tmp_path / "r16.png").mode.startswith("I")
    grey = _grey(load_image(tmp_path / "r16.png")).ravel().astype(int)
    assert grey.min() == 0 and grey.max() == 255 and (np.diff(grey) >= 0).all()
    assert len(np.unique(grey)) > 200  # the full range is kept, not clipped at 255


def test_jpeg_and_multipage_tiff(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    Image.fromarray(np.dstack([smooth] * 3)).save(tmp_path / "x.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "x.jpg")).astype(int)
    assert out.shape == (32, 32, 3) and np.abs(out - smooth[..., None]).max() <= 8
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "s.tif", save_all=True, append_images=pages[1:])
    assert _grey(load_image(tmp_path / "s.tif"))[0, 0] == 20
    assert _grey(load_image(tmp_path / "s.tif", frame=2))[0, 0] == 30


# ------------------------------------------------------------------------------------------ broken input
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nowhere\.png: file not found") as info:
        load_image(tmp_path / "nowhere.png")
    assert isinstance(info.value, OSError) and info.value.path.endswith("nowhere.png")


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage, not an image")
    with pytest.raises(ImageLoadError, match=r"bad\.png: unrecognised or corrupt"):
        load_image(tmp_path / "bad.png")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"t\.png"):
        load_image(tmp_path / "t.png")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 40)
    with pytest.raises(ImageLoadError, match=r"bad\.dcm"):
        load_image(tmp_path / "bad.dcm")


def test_broken_dicoms_from_pydicom_data() -> None:
    with pytest.raises(ImageLoadError, match=r"MR_truncated\.dcm: .*pixel data"):
        load_image(_dicom("MR_truncated.dcm"))
    with pytest.raises(ImageLoadError, match=r"rtplan\.dcm: DICOM file has no pixel data"):
        load_image(_dicom("rtplan.dcm"))


# -------------------------------------------------------------------------------- greyscale kept as one channel
def test_grey_sources_stay_one_channel_and_convert_back_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=90)
    Image.fromarray(grey.astype(np.uint16) * 16).save(tmp_path / "g16.png")
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([grey, grey])).save(tmp_path / "la.png")  # alpha: composited, so RGB
    _write_dicom(tmp_path / "m1.dcm", grey.astype(np.uint16) * 8, "MONOCHROME1")
    cases = {"g.png": "L", "g.jpg": "L", "g16.png": "L", "c.png": "RGB", "la.png": "RGB", "m1.dcm": "L",
             _dicom("CT_small.dcm"): "L", _dicom("SC_rgb.dcm"): "RGB"}  # fmt: skip
    for name, mode in cases.items():
        path = tmp_path / name
        as_grey, as_rgb = load_image(path, grey=True), load_image(path)
        assert (as_grey.mode, as_rgb.mode) == (mode, "RGB"), name
        assert np.array_equal(np.asarray(as_grey.convert("RGB")), np.asarray(as_rgb)), name
    assert np.array_equal(np.asarray(load_image(tmp_path / "g.png", grey=True)), grey)
