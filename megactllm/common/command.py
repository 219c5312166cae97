"""What every command-line entry point shares: how a user's mistake ends (one `error: ...` line on
stderr, exit code 2) and how a bug ends (its traceback, exit code 1).

    @entry_point
    def main(argv=None, prog=None) -> int:
        args = CommandParser(prog=prog, description=__doc__).parse_args(argv)
        need_path(args.input, "--input")
        with user_errors(SomeLibraryError):  # a library error that is the user's, not yet a UserError
            ...

Only entry points use this: library functions take values, never argv.
"""
from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

from megactllm.errors import EXIT_USER_ERROR, UserError, print_error


class UsageError(UserError):
    """A command line that does not parse: unknown flag, missing argument, bad value."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or directory named on the command line is not there."""


class CommandParser(argparse.ArgumentParser):
    """argparse whose mistakes go through the entry point's one error line (and its exit code 2)
    instead of a usage block; --help prints as usual. Subcommand parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def entry_point(run: Callable[[Optional[list], Optional[str]], Optional[int]]) -> Callable[..., int]:
    """`run(argv, prog)` as a `main(argv=None, prog=None) -> int`: a UserError becomes one line and 2."""

    @functools.wraps(run)
    def main(argv: Optional[list] = None, prog: Optional[str] = None) -> int:
        try:
            code = run(argv, prog)
        except UserError as exc:
            print_error(str(exc))
            return EXIT_USER_ERROR
        return 0 if code is None else int(code)

    return main


@contextmanager
def user_errors(*types: type) -> Iterator[None]:
    """Errors of `types` raised inside are the user's: re-raised as UserError with the same message."""
    try:
        yield
    except UserError:
        raise
    except types as exc:
        raise UserError(str(exc)) from exc


def need_path(path, flag: str, kind: str = "") -> str:
    """`path` exists (a file, or a directory when kind="dir"), else an error naming the flag and the path."""
    text = os.fspath(path)
    if not os.path.exists(text):
        raise InputNotFoundError(f"{flag} {text} does not exist")
    if kind == "dir" and not os.path.isdir(text):
        raise InputNotFoundError(f"{flag} {text} is not a directory")
    if kind == "file" and not os.path.isfile(text):
        raise InputNotFoundError(f"{flag} {text} is not a file")
    return text
