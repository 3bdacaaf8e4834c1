"""Run as a script (standard library only): `python orphan_watcher.py PARENT_PID CHILD_PID`.

Ends CHILD (SIGTERM, then SIGKILL) as soon as it no longer has PARENT as its parent process, i.e. when the
parent died, even by SIGKILL; exits when the child is gone. See flows.server_guard."""

import os
import signal
import sys
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (None if fields[0] == "Z" else (int(fields[1]), fields[19]))


def main(parent: int, child: int) -> None:
    first = _stat(child)
    if first is None:
        return
    while (now := _stat(child)) is not None and now[1] == first[1]:
        if now[0] != parent:
            os.kill(child, signal.SIGTERM)
            deadline = time.monotonic() + GRACE_SECONDS
            while _stat(child) is not None and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS / 5)
            if _stat(child) is not None:
                os.kill(child, signal.SIGKILL)
            return
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
