"""Tiny fake raw trees in the official layouts of the paper's four datasets (for the prepare tests).

Each builder writes the official file names, CSV headers and quirks, plus one small non-empty file per
image (the preparers only check that files exist). Rows are given explicitly so tests can assert exact
outputs; `shuffle=True` writes the same rows in another order.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

# ---------------------------------------------------------------- NIH ChestX-ray14
# The real header has unquoted brackets with commas and a trailing comma (-> an unnamed last column).
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
# (image, Finding Labels, patient id, list) ; list is "tv" (train_val_list), "test" or "" (in no list)
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1, "tv"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, "tv"),
    ("00000002_000.png", "No Finding", 2, "tv"),
    ("00000003_000.png", "Effusion", 3, "tv"),
    ("00000004_000.png", "Pleural_Thickening", 4, "tv"),
    ("00000005_000.png", "Infiltration", 5, "tv"),
    ("00000005_001.png", "Infiltration", 5, "tv"),
    ("00000006_000.png", "Pneumothorax", 6, "tv"),
    ("00000007_000.png", "Atelectasis", 7, "tv"),
    ("00000008_000.png", "Edema", 8, "tv"),
    ("00000009_000.png", "Fibrosis", 9, "tv"),
    ("00000010_000.png", "Consolidation", 10, "tv"),
    ("00000011_000.png", "Hernia", 11, "test"),
    ("00000012_000.png", "Mass|Nodule", 12, "test"),
    ("00000013_000.png", "Pneumonia", 13, "test"),
    ("00000014_000.png", "Nodule", 14, ""),
]


def write_file(path: Path, data: bytes = b"fake image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _ordered(rows: list, shuffle: bool, seed: int = 123) -> list:
    rows = list(rows)
    if shuffle:
        random.Random(seed).shuffle(rows)
    return rows


def make_nih(root: Path, rows=NIH_ROWS, shuffle: bool = False, skip_images=()) -> Path:
    """`root/` with Data_Entry_2017.csv, the two lists and PNGs split over images_001/ and images_002/."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [NIH_HEADER]
    for image, findings, patient, _ in _ordered(rows, shuffle):
        lines.append(f"{image},{findings},0,{patient},58,M,PA,2682,2749,0.143,0.143,")
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    for name, which in (("train_val_list.txt", "tv"), ("test_list.txt", "test")):
        names = [r[0] for r in _ordered(rows, shuffle, seed=7) if r[3] == which]
        (root / name).write_text("\n".join(names) + "\n")
    for i, (image, *_rest) in enumerate(rows):
        if image not in skip_images:
            write_file(root / f"images_00{1 + i % 2}" / "images" / image)
    return root


# ---------------------------------------------------------------- CheXpert v1.0
CHEXPERT_FINDINGS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
# (patient, study, view, {finding: value as written}) ; unspecified findings are blank
CHEXPERT_TRAIN = [
    (1, 1, "frontal", {"Cardiomegaly": "1.0", "Edema": "-1.0", "Fracture": "0.0"}),
    (1, 1, "lateral", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),
    (2, 1, "frontal", {"No Finding": "1.0", "Support Devices": "1.0"}),
    (3, 1, "frontal", {"Support Devices": "1.0"}),
    (4, 1, "frontal", {"Edema": "1.0", "Pneumonia": "1.0"}),
    (5, 1, "frontal", {"Atelectasis": "-1.0"}),
    (6, 1, "frontal", {"Pleural Effusion": "1.0"}),
    (7, 1, "frontal", {"Lung Opacity": "1.0"}),
    (7, 2, "frontal", {"Lung Opacity": "1.0"}),
    (8, 1, "frontal", {"Pneumothorax": "1.0"}),
    (9, 1, "frontal", {"Consolidation": "1.0"}),
    (10, 1, "frontal", {"Fracture": "1.0", "Lung Lesion": "0.0"}),
    (11, 1, "frontal", {"Enlarged Cardiomediastinum": "1"}),
]
CHEXPERT_VALID = [
    (64541, 1, "frontal", {"Pleural Other": "1.0"}),
    (64542, 1, "lateral", {"Lung Lesion": "1.0"}),
    (64543, 1, "frontal", {"Edema": "1.0", "Cardiomegaly": "1.0"}),
]


def chexpert_path(split: str, patient: int, study: int, view: str) -> str:
    number = 1 if view == "frontal" else 2
    return f"CheXpert-v1.0/{split}/patient{patient:05d}/study{study}/view{number}_{view}.jpg"


def _chexpert_csv(path: Path, split: str, rows: list, default: str) -> None:
    lines = [",".join(CHEXPERT_HEADER)]
    for patient, study, view, values in rows:
        cells = [chexpert_path(split, patient, study, view), "Female", "68", view.capitalize()]
        cells.append("AP" if view == "frontal" else "")
        cells += [values.get(f, default) for f in CHEXPERT_FINDINGS]
        lines.append(",".join(cells))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_chexpert(
    root: Path, train=CHEXPERT_TRAIN, valid=CHEXPERT_VALID, shuffle: bool = False, skip_images=()
) -> Path:
    """`root/CheXpert-v1.0/{train,valid}.csv` (train blanks; valid all 0.0/1.0) and the JPGs."""
    _chexpert_csv(root / "CheXpert-v1.0" / "train.csv", "train", _ordered(train, shuffle), "")
    _chexpert_csv(root / "CheXpert-v1.0" / "valid.csv", "valid", _ordered(valid, shuffle), "0.0")
    for split, rows in (("train", train), ("valid", valid)):
        for row in rows:
            rel = chexpert_path(split, *row[:3])
            if rel not in skip_images:
                write_file(root / rel)
    return root


# ---------------------------------------------------------------- MIMIC-CXR-JPG 2.0.0
MIMIC_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
# (dicom_id, study_id, subject_id, split)
MIMIC_SPLIT = [
    ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 50414267, 10000032, "train"),
    ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", 50414267, 10000032, "train"),
    ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", 53189527, 10000032, "train"),
    ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", 53911762, 10000764, "train"),
    ("ea030e7a-2e3b1346-bc518786-7a8fd698-f673b44c", 57375967, 10000898, "validate"),
    ("096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", 56699142, 10001884, "test"),
    ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", 58000001, 11000011, "train"),
]
# (subject_id, study_id, {finding: value}) ; blank otherwise ; study 58000001 has no label row
MIMIC_LABELS = [
    (10000032, 50414267, {"No Finding": "1.0"}),
    (10000032, 53189527, {"Edema": "1.0", "Pneumonia": "-1.0", "Support Devices": "1.0"}),
    (10000764, 53911762, {"Consolidation": "1.0", "Pneumonia": "1.0"}),
    (10000898, 57375967, {"Pleural Effusion": "1.0", "Lung Opacity": "0.0"}),
    (10001884, 56699142, {"Support Devices": "1.0"}),
    (10002428, 59999999, {"Edema": "1.0"}),
]
MIMIC_DIR = Path("files", "mimic-cxr-jpg", "2.0.0")


def mimic_image(subject: int, study: int, dicom: str) -> str:
    return f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


def _write_text(path: Path, text: str, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.GzipFile(path.with_name(path.name + ".gz"), "wb", mtime=0) as fh:
            fh.write(text.encode())
    else:
        path.write_text(text)


def make_mimic(
    root: Path, split=MIMIC_SPLIT, labels=MIMIC_LABELS, shuffle=False, gz=True, skip_images=()
) -> Path:
    """`root/files/mimic-cxr-jpg/2.0.0/` with the (gzipped, as distributed) split and labels CSVs and JPGs."""
    version = root / MIMIC_DIR
    lines = ["dicom_id,study_id,subject_id,split"]
    lines += [f"{d},{st},{su},{sp}" for d, st, su, sp in _ordered(split, shuffle)]
    _write_text(version / "mimic-cxr-2.0.0-split.csv", "\n".join(lines) + "\n", gz)
    lines = [",".join(["subject_id", "study_id", *MIMIC_FINDINGS])]
    for subject, study, values in _ordered(labels, shuffle):
        lines.append(",".join([str(subject), str(study), *[values.get(f, "") for f in MIMIC_FINDINGS]]))
    _write_text(version / "mimic-cxr-2.0.0-chexpert.csv", "\n".join(lines) + "\n", gz)
    for dicom, study, subject, _ in split:
        if dicom not in skip_images:
            write_file(version / mimic_image(subject, study, dicom))
    return root


# ---------------------------------------------------------------- RadImageNet
# (split, filename) ; filenames start with the top folder `radiology_ai/` as in RadiologyAI_*.csv
RADIMAGENET_ROWS = [
    ("train", "radiology_ai/CT/lung/nodule/lung012345.png"),
    ("train", "radiology_ai/CT/lung/normal/lung000001.png"),
    ("train", "radiology_ai/MR/knee/acl_pathology/knee000123.png"),
    ("train", "radiology_ai/US/aorta/aorta000001.png"),
    ("train", "radiology_ai/US/thyroid/thyroid000007.png"),
    ("train", "radiology_ai/US/thyroid_nodule/thyroid_nodule000003.png"),
    ("val", "radiology_ai/CT/lung/nodule/lung054321.png"),
    ("val", "radiology_ai/US/kidney/kidney000010.png"),
    ("test", "radiology_ai/MR/knee/acl_pathology/knee000999.png"),
    ("test", "radiology_ai/US/thyroid_nodule/thyroid_nodule000004.png"),
    ("test", "radiology_ai/CT/lung/nodule/lung099999.png"),
]


def radimagenet_label(filename: str) -> str:
    """The label the official folder names map to (the CSVs' own `label` column)."""
    parts = filename.split("/")
    return "US-" + parts[2] if len(parts) == 4 else f"{parts[1]}-{parts[3]}"


def make_radimagenet(root: Path, rows=RADIMAGENET_ROWS, shuffle: bool = False, skip_images=()) -> Path:
    """`root` (named radiology_ai) with RadiologyAI_{train,val,test}.csv (filename,label) and PNGs."""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        names = [f for s, f in _ordered(rows, shuffle) if s == split]
        lines = ["filename,label"] + [f"{f},{radimagenet_label(f)}" for f in names]
        (root / f"RadiologyAI_{split}.csv").write_text("\n".join(lines) + "\n")
    for _, filename in rows:
        if filename not in skip_images:
            write_file(root / filename.split("/", 1)[1])
    return root


# ---------------------------------------------------------------- reading outputs back
def rows_of(df) -> list[tuple[str, str, str, str]]:
    """(filepath, split, label, patient_id) of each manifest row, in table order."""
    from cbmir.manifest import row_labels

    patients = df["patient_id"].fillna("").astype(str) if "patient_id" in df else [""] * len(df)
    return list(zip(df["filepath"], df["split"], row_labels(df), patients, strict=True))
