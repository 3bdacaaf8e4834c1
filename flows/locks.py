"""Locks every worker shares (tasks.exclusive): a Prefect global concurrency limit of one slot per lock name,
held through the Prefect server the workers talk to, so two runs on two machines never build the same
index version, train the same adapter, evaluate the same system or register into the same model at
once. Without a Prefect server (PREFECT_API_URL unset: a local run on the temporary API) the file
lock of tasks.exclusive serialises the processes of this machine.

A limit is created on first use (`ragtune-<lock name>`, one slot) and kept: the Prefect UI's
Concurrency page shows which run holds it. A holder that dies releases it when its lease runs out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from tasks.exclusive import file_lock

LEASE_SECONDS = 300  # renewed while held; how long a dead holder keeps the lock


def limit_name(name: str) -> str:
    return f"ragtune-{name}"


def _ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def shared_lock(name: str, lock_dir: Path) -> Iterator[None]:
    """The Prefect server's lock when there is a server, else the file lock."""
    if not os.environ.get("PREFECT_API_URL"):
        with file_lock(name, lock_dir):
            yield
        return
    limit = limit_name(name)
    _ensure_limit(limit)
    with concurrency(limit, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
