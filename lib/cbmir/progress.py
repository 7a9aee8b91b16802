"""Progress bars: shown unless the caller says no or `TQDM_DISABLE` is set (as for rendered reports)."""

from __future__ import annotations

import os


def hide_progress(progress: bool = True) -> bool:
    """The `disable=` value for a tqdm bar (tqdm itself ignores TQDM_DISABLE when `disable` is passed)."""
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
