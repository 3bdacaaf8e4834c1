"""Content-keyed results of the stages that leave no artifact of their own (validate, evaluate).

The index and the adapters are directories named by what they were built from (tasks.indexing,
tasks.finetuning). Validation reports and candidate evaluations are small Python objects: they are
pickled here under `cache_root/<stage>/<key>.pkl`, where the key hashes exactly the inputs that
stage reads plus ragtune's version, so a run whose inputs did not change reuses the result and a
run after an upgrade does not. A file is written completely or not at all; one that cannot be read
back (written by other code) is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def _ragtune_version() -> str:
    try:
        return version("ragtune")
    except PackageNotFoundError:
        return "source"


def stage_key(**inputs: Any) -> str:
    """A short hash of a stage's inputs (JSON-able, or with a `str` that names them) and ragtune's version."""
    payload = json.dumps({"ragtune": _ragtune_version(), **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class StageCache:
    """Results of one stage under `root/stage`, one pickle per key."""

    def __init__(self, root: Path, stage: str):
        self.directory = Path(root) / stage

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pkl"

    def get(self, key: str) -> Any | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with path.open("rb") as fh:
                return pickle.load(fh)  # noqa: S301 - written by this process's own code, under the project
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{key}-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(staging, self.path(key))
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
