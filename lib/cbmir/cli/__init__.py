"""The `cbmir` command line: one module per command group, each with `register(subparsers)`.

Groups, in the order `cbmir --help` lists them: `prepare` (prepare, combine, summary), `radmini`, `models`,
`embed`, `search`, `report`, `authors` (import-authors). A group's module adds its subcommand(s) and sets `func(args) -> int` on each
parser; heavy imports stay inside the command functions so that `cbmir --help` is quick. Library modules
never parse arguments: these modules turn options into library calls and results into printed lines.

Errors. A *user error* is printed as one line, `cbmir: error: <message>`, with exit status 2 (argparse's own
status for bad options). User errors are:

- every `cbmir.errors.CbmirError` (ConfigError, ManifestError, StoreError, ImageLoadError, DatasetError,
  ModelUnavailableError, ...);
- `FileNotFoundError`, `PermissionError`, `IsADirectoryError`, `NotADirectoryError`, and an `OSError` for a
  full disk (ENOSPC) or a read-only file system (EROFS): a path the user gave, or the machine, is at fault;
- a `ValueError` whose message names a parameter (`parameter 'k' = 1000 must be ...`, `parameters 'a' and
  'b' ...`): the library's convention for a bad argument value. Any other `ValueError` is a bug.

Everything else is an internal error and keeps its traceback. `--debug` (before or after the subcommand) or the
environment variable `CBMIR_DEBUG=1` shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys

from cbmir.errors import CbmirError

# Command groups: modules under cbmir.cli, in the order their subcommands appear in `cbmir --help`.
GROUPS = ("prepare", "radmini", "models", "embed", "search", "report", "authors")
DEBUG_ENV = "CBMIR_DEBUG"
DESCRIPTION = "cbmir: content-based image retrieval in radiology with vision foundation models."
EPILOG = "User errors print one line and exit with status 2; --debug (or CBMIR_DEBUG=1) shows the traceback."

_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_USER_ERRNOS = (errno.ENOSPC, errno.EROFS)
_NAMES_A_PARAMETER = re.compile(r"\bparameters? '[^']+'")


class OptionError(CbmirError):
    """A command-line option with a value the command cannot use; the message names the option."""


def build_parser() -> argparse.ArgumentParser:
    """The `cbmir` parser with every group's subcommands and a `--debug` flag on each."""
    parser = argparse.ArgumentParser(prog="cbmir", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--debug", action="store_true", help=f"show tracebacks of user errors (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    _add_debug_flag(sub)
    return parser


def _add_debug_flag(subparsers: argparse._SubParsersAction) -> None:
    """`--debug` after a subcommand too; SUPPRESS keeps a sub-parser from resetting the top-level flag."""
    for parser in subparsers.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug_flag(action)


def is_user_error(err: BaseException) -> bool:
    """Whether `err` is the user's to fix (printed as one line) rather than a bug (traceback); see module doc."""
    if isinstance(err, (CbmirError, *_USER_OS_ERRORS)):
        return True
    if isinstance(err, OSError) and err.errno in _USER_ERRNOS:
        return True
    return isinstance(err, ValueError) and bool(_NAMES_A_PARAMETER.search(str(err)))


def error_message(err: BaseException) -> str:
    """One line for a user error: the exception's message, or `<file>: <reason>` for an OS error."""
    if isinstance(err, OSError) and not isinstance(err, CbmirError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    """`--debug` was given or `CBMIR_DEBUG` is set to anything but empty or 0."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run one `cbmir` command; return its exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if debug_requested(args) or not is_user_error(err):
            raise
        print(f"cbmir: error: {error_message(err)}", file=sys.stderr)
        return 2
