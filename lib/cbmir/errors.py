"""The one base class of errors caused by what a user gave cbmir (a file, a parameter, a config).

The command line prints these as one line (`cbmir: error: <message>`, exit status 2); any other exception is
an internal error and keeps its traceback.
"""

from __future__ import annotations


class CbmirError(Exception):
    """Bad input from the user: the message names the file, row, key or parameter at fault."""
