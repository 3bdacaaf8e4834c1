"""Write a directory (or a file) completely or not at all: build it under a staging name, then rename it into place.

A reader never sees a half-written directory, and a killed writer leaves only a dot-named staging
directory, which `clear_staging` removes before the next write.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `target`; rename it to `target` when the block succeeds,
    delete it when the block raises (or is interrupted)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def clear_staging(directory: Path, prefix: str) -> None:
    """Remove staging directories that a killed writer left for targets named `prefix*` in `directory`."""
    for stale in Path(directory).glob(f".{prefix}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def atomic_write_text(target: Path, text: str) -> None:
    """Write a file completely or not at all (a staging file beside it, renamed into place)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
