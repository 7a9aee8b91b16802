"""Retrieval metrics (`retrieval`), their chance values (`chance`) and case-level bootstrap statistics (`bootstrap`).

The public names of the three modules are re-exported here, so `from cbmir.metrics import precision_at_n` works.
"""

from cbmir.metrics.bootstrap import (
    AVERAGES,
    bootstrap_ci,
    case_codes,
    holm,
    paired_bootstrap,
    resample_stats,
)
from cbmir.metrics.chance import (
    chance_micro_macro,
    conditional_chance,
    expected,
    expected_average_precision,
    expected_hit,
    expected_map_at_r,
    expected_plain_precision,
    expected_precision,
    expected_r_precision,
)
from cbmir.metrics.retrieval import (
    average_precision_at_n,
    encode_labels,
    hit_at_n,
    label_matrices,
    map_at_r,
    micro_macro,
    per_class_precision,
    plain_precision_at_n,
    precision_at_n,
    r_precision,
    retrieval_metrics,
    retrieval_metrics_by_level,
)

__all__ = [
    "AVERAGES",
    "average_precision_at_n",
    "bootstrap_ci",
    "case_codes",
    "chance_micro_macro",
    "conditional_chance",
    "encode_labels",
    "expected",
    "expected_average_precision",
    "expected_hit",
    "expected_map_at_r",
    "expected_plain_precision",
    "expected_precision",
    "expected_r_precision",
    "hit_at_n",
    "holm",
    "label_matrices",
    "map_at_r",
    "micro_macro",
    "paired_bootstrap",
    "per_class_precision",
    "plain_precision_at_n",
    "precision_at_n",
    "r_precision",
    "resample_stats",
    "retrieval_metrics",
    "retrieval_metrics_by_level",
]
