"""Which process owns an MLflow run, so that the next run can end the runs of a process that was killed.

A killed process (SIGKILL, out of memory, a pulled plug) cannot end its own runs: they stay RUNNING forever.
Every run ragtune starts is tagged with its owner (host, boot, process id and start time); at the start of
the next run on the same machine, a RUNNING run whose owner process is gone is ended as KILLED. Runs owned
by other machines are left alone: this machine cannot tell whether their process still lives.
"""

from __future__ import annotations

import logging
import os
import socket
from functools import cache

from mlflow.tracking import MlflowClient

OWNER_TAG = "ragtune.owner"
log = logging.getLogger(__name__)


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


@cache
def _machine() -> str:
    """This host and boot: a process id means nothing after a reboot."""
    boot = (_read("/proc/sys/kernel/random/boot_id") or "").strip()
    return f"{socket.gethostname()}/{boot}"


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), telling a reused process id apart; None if it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def owner_tags() -> dict[str, str]:
    """Tags naming the current process as the owner of a run."""
    pid = os.getpid()
    return {OWNER_TAG: f"{_machine()}/{pid}/{_start_time(pid) or ''}"}


def _owner_gone(owner: str) -> bool:
    """Whether `owner` (host/boot/pid/start) is a process of this machine's current boot that no longer runs."""
    parts = owner.rsplit("/", 2)
    if len(parts) != 3:
        return False
    machine, pid, started = parts
    if machine != _machine() or not pid.isdigit() or not started:
        return False
    return _start_time(int(pid)) != started


def end_orphaned_runs(experiment_id: str, client: MlflowClient | None = None) -> list[str]:
    """End as KILLED every RUNNING run of the experiment whose owner process on this machine is gone."""
    client = client or MlflowClient()
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in runs:
        owner = run.data.tags.get(OWNER_TAG)
        if owner and _owner_gone(owner):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("ended %d run(s) left RUNNING by a killed process as KILLED: %s", len(ended), ", ".join(ended))
    return ended
