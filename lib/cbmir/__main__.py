"""`python -m cbmir ...`: the same command line as the `cbmir` script."""

import sys

from cbmir.cli import main

if __name__ == "__main__":
    sys.exit(main())
