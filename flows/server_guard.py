"""Prefect's temporary API server (what a local run without PREFECT_API_URL talks to) is a child process that
Prefect stops at exit, but that outlives a parent killed with SIGKILL. Each one started here gets a tiny
watcher process (flows/orphan_watcher.py, no imports beyond the standard library) that ends it as soon as its
parent is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.server.api.server import SubprocessASGIServer

WATCHER = Path(__file__).with_name("orphan_watcher.py")


def install() -> None:
    """Wrap Prefect's start of the temporary server so that every start also starts its watcher (idempotent)."""
    start = SubprocessASGIServer._run_uvicorn_command
    if getattr(start, "watched", False):
        return

    def start_watched(self: SubprocessASGIServer) -> subprocess.Popen:
        process = start(self)
        subprocess.Popen([sys.executable, str(WATCHER), str(os.getpid()), str(process.pid)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        return process

    start_watched.watched = True
    SubprocessASGIServer._run_uvicorn_command = start_watched
