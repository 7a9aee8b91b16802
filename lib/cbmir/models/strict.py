"""Strict weight loading: a checkpoint must fill every vision weight and hold no vision weight left unused.

Tensors of heads the embedding does not use (text towers, decoders, classifiers, poolers) may be in a
checkpoint; they are counted by head in provenance (`unused_weights`), never silently dropped. Anything else
that does not match is a `WeightsMismatchError` naming the file and the keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from cbmir.errors import CbmirError

# first key components of heads an image embedding never uses (transformers, open_clip, segment-anything, timm)
UNUSED_HEADS = frozenset(
    {
        "pooler", "classifier", "decoder", "head", "heads", "fc", "lm_head", "text_model", "text_projection",
        "transformer", "token_embedding", "positional_embedding", "ln_final", "logit_scale", "logit_bias",
        "text", "prompt_encoder", "mask_decoder", "shared_image_embedding",
    }
)  # fmt: skip
SHOWN_KEYS = 10


class WeightsMismatchError(CbmirError, ValueError):
    """A checkpoint's vision weights do not match the model (the message names the file and the keys)."""


def _shown(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def check_keys(name: str, path: Path | str, missing: Iterable[str], unexpected: Iterable[str]) -> None:
    """Raise `WeightsMismatchError` when any vision weight is missing from `path` or left over in it."""
    missing, unexpected = list(missing), list(unexpected)
    if not missing and not unexpected:
        return
    parts = [f"missing {len(missing)}: {_shown(missing)}"] if missing else []
    parts += [f"unexpected {len(unexpected)}: {_shown(unexpected)}"] if unexpected else []
    raise WeightsMismatchError(
        f"model {name!r}: checkpoint {path} does not match the model: {'; '.join(parts)}"
    )


def head_of(key: str) -> str:
    """The first component of a tensor name (`text_model.encoder...` -> `text_model`)."""
    return key.split(".", 1)[0]


def split_unused(keys: Iterable[str], heads: Iterable[str] = UNUSED_HEADS) -> tuple[list[str], list[str]]:
    """`keys` split into (those of unused heads, the rest)."""
    heads = set(heads)
    unused = [k for k in keys if head_of(k) in heads]
    return unused, [k for k in keys if head_of(k) not in heads]


def unused_record(keys: Iterable[str], prefix: str = "") -> dict[str, int]:
    """Tensor counts by head, for provenance (`{"text_model": 196, "decoder": 104}`)."""
    return dict(sorted(Counter(prefix + head_of(k) for k in keys).items()))


def load_strict(
    module: torch.nn.Module,
    state: dict[str, Any],
    name: str,
    path: Path | str,
    heads: Iterable[str] = UNUSED_HEADS,
) -> dict[str, int]:
    """Load `state` into `module`: every module weight must be filled, and every leftover tensor must belong to
    an unused head (those are returned, counted by head). Shape mismatches name the file too."""
    unused, rest = split_unused([k for k in state if k not in module.state_dict()], heads)
    kept = {k: v for k, v in state.items() if k not in unused}
    try:
        missing, unexpected = module.load_state_dict(kept, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsMismatchError(
            f"model {name!r}: checkpoint {path}: {' '.join(str(err).split())}"
        ) from err
    check_keys(name, path, missing, unexpected)
    return unused_record(unused)
