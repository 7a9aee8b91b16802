"""Hold an embedding store's writer lock in a subprocess (for the one-writer tests).

usage: python _lock_holder.py STORE_DIR SECONDS   (prints "locked" once it holds the lock, then sleeps)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from cbmir.store import store_lock


def main(argv: list[str]) -> int:
    with store_lock(Path(argv[0])):
        print("locked", flush=True)
        time.sleep(float(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
