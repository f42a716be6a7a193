"""What every command shares: the exit codes, the one-line parser errors, progress, and output files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from pathlib import Path
from typing import Any, TextIO


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


@contextmanager
def complete_or_nothing(path: str) -> Iterator[TextIO]:
    """Write `path` whole or not at all: a `.partial` file renamed once complete."""
    target = Path(path)
    partial = target.with_name(f"{target.name}.partial")
    with partial.open("w", encoding="utf-8", newline="") as file:
        yield file
    partial.replace(target)
