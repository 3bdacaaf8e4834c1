"""Work that must not run twice at once, across processes and machines.

A lock is named by what it protects: `index-<version>`, `adapter-<key>`, `evaluation-<key>`,
`registry-<model name>`. Two runs that need the same thing take turns; the second then finds it
built (or registered) and reuses it, and says it waited. tasks/ asks for a lock through
`exclusive(name, lock_dir)`; which lock that is depends on where runs meet: by default a file lock
under `lock_dir` (runs on one machine), and the orchestration layer installs a shared one
(flows.locks: a Prefect global concurrency limit of one slot per name, held through the Prefect
server every worker talks to) with `use()`.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

log = logging.getLogger("ragtune.exclusive")
Holder = Callable[[str, Path], AbstractContextManager[None]]
WAIT_WORTH_SAYING_S = 1.0


@contextmanager
def file_lock(name: str, lock_dir: Path) -> Iterator[None]:
    """An flock on `lock_dir/<name>.lock`: exclusive between processes of one machine."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_holder: Holder = file_lock


def use(holder: Holder) -> None:
    """Install the lock every `exclusive` takes from now on in this process."""
    global _holder
    _holder = holder


def lock_name(*parts: str) -> str:
    """A lock name from its parts, in the characters every lock backend accepts."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


@contextmanager
def exclusive(name: str, lock_dir: Path) -> Iterator[float]:
    """Hold the lock `name` for the block; yields how many seconds it waited for another run."""
    start = time.monotonic()
    with _holder(name, Path(lock_dir)):
        waited = time.monotonic() - start
        if waited >= WAIT_WORTH_SAYING_S:
            log.info("waited %.0f s for %s: another run held it", waited, name)
        yield waited
