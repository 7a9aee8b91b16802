"""Case-level train/val/test assignment for RadMini: deterministic, seeded, covering classes with queries.

A case is what the manifest's `patient_id` holds: a patient, a volume, or a near-duplicate group.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TEST_FRACTION = 0.33
VAL_FRACTION = 0.10
MIN_TEST_CASES = (
    3  # a class with enough cases gets test cases from at least this many (keeping 2 in the index)
)
MAX_QUERY_IMAGES = 12  # a patient/volume with more images than this is kept in the index unless it is needed


def n_test(n: int, test_fraction: float = TEST_FRACTION) -> int:
    """Test cases of a class with `n` cases: max(1, round(test_fraction * n), min(MIN_TEST_CASES, n - 2))."""
    return max(1, round(test_fraction * n), min(MIN_TEST_CASES, n - 2)) if n >= 2 else 0


def assign_splits(
    patient_ids: pd.Series | list[str],
    labels: pd.Series | list[str],
    seed: int = 0,
    test_fraction: float = TEST_FRACTION,
    val_fraction: float = VAL_FRACTION,
) -> dict[str, str]:
    """Map each patient id to "train", "val" or "test" (all images of a patient share one split).

    Rules: classes are visited rarest first (ties by name); a class with n >= 2 patients gets
    `n_test(n)` test patients and, when at least 3 patients remain,
    max(1, round(val_fraction * n)) val patients; a patient leaves the index only if every class it carries keeps at least one index
    patient, so a single-patient class stays in train. Candidates are taken in a seeded permutation of the
    sorted patient ids, preferring patients with at most MAX_QUERY_IMAGES images.
    """
    table = pd.DataFrame({"patient": list(map(str, patient_ids)), "label": list(map(str, labels))})
    if table.empty:
        return {}
    patients = sorted(table["patient"].unique())
    rank = {
        p: int(r)
        for p, r in zip(patients, np.random.default_rng(seed).permutation(len(patients)), strict=True)
    }
    size = table.groupby("patient").size().to_dict()
    classes_of = table.groupby("patient")["label"].agg(lambda s: sorted(set(s))).to_dict()
    patients_of = table.groupby("label")["patient"].agg(lambda s: sorted(set(s))).to_dict()
    split: dict[str, str] = {}

    def in_index(label: str) -> int:
        return sum(1 for p in patients_of[label] if split.get(p, "train") == "train")

    def may_leave(p: str) -> bool:
        return all(in_index(c) >= 2 for c in classes_of[p])

    for label in sorted(patients_of, key=lambda c: (len(patients_of[c]), c)):
        members = patients_of[label]
        n = len(members)
        if n < 2:
            continue
        want = {"test": n_test(n, test_fraction)}
        want["val"] = max(1, round(val_fraction * n)) if n - want["test"] >= 3 else 0
        order = sorted(members, key=lambda p: (size[p] > MAX_QUERY_IMAGES, rank[p]))
        for name in ("test", "val"):
            have = sum(1 for p in members if split.get(p) == name)
            for p in order:
                if have >= want[name]:
                    break
                if p not in split and may_leave(p):
                    split[p] = name
                    have += 1
    return {p: split.get(p, "train") for p in patients}
