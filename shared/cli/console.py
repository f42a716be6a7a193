"""What every command shares: the exit codes, the one-line parser errors, progress, and output files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO

from shared.errors import InputError


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    REFUSED = 3


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not the usage block
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(Exit.BAD_INPUT)


def progress_to(err: TextIO) -> Callable[[str], None]:
    """Progress lines on a terminal; nothing when stderr is a file or a pipe (scripts)."""
    interactive = err.isatty()

    def show(message: str) -> None:
        if interactive:
            err.write(f"  {message}\n")
            err.flush()

    return show


def writable(field: str, path: str) -> Path:
    """Check an output path before the work that fills it: a missing folder is a one-line error now."""
    target = Path(path)
    if target.is_dir() or not target.parent.is_dir():
        raise InputError(field, f"cannot write {path}: {'it is a folder' if target.is_dir() else 'no such folder'}")
    return target


@contextmanager
def complete_or_nothing(field: str, path: str) -> Iterator[TextIO]:
    """Write `path` whole or not at all: a `.partial` file, renamed once complete, removed on failure."""
    target = writable(field, path)
    partial = target.with_name(f"{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as file:
            yield file
        partial.replace(target)
    except (ConnectionError, TimeoutError):
        raise  # the work that fills the file failed, not the file
    except OSError as err:  # could not open, write or rename it: a full disk, no permission
        raise InputError(field, f"cannot write {path}: {err.strerror or err}") from None
    finally:
        partial.unlink(missing_ok=True)
