"""The gateway's record writer: every answered request reaches the MLflow store once, off the response path.

MLflow's own trace export is best effort: a full queue or a failed write drops the trace with a
warning. The gateway does not rely on it. An answered request is first put in the outbox (one
small JSON file, renamed into place, so a killed gateway leaves whole files only), then this
writer exports it synchronously, checks that the store holds the trace with its spans, and only
then deletes the file. A failed write is retried with backoff, never dropped; a partly written
trace is deleted before the retry. A gateway owns its outbox (a lock file) and, when it starts,
writes what a killed predecessor left there, skipping any record the store already holds.
Feedback on a request still waiting in the outbox waits for it (`wait_written`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import IO

from tasks import request_log
from tasks.request_log import RequestRecord

log = logging.getLogger("ragtune.gateway")
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0


class OutboxInUse(RuntimeError):
    """Another live gateway writes from this outbox."""


def use_synchronous_export() -> None:
    """Make MLflow export each trace before `span.end()` returns, so the writer can check what it wrote."""
    import mlflow

    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    mlflow.tracing.reset()  # the exporter reads the switch (and the tracking URI) when it is built


class RequestWriter:
    """One thread that writes the outbox's records to MLflow, in order, each exactly once."""

    def __init__(self, outbox: Path, max_waiting: int):
        self.outbox = Path(outbox)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._own(self.outbox)
        use_synchronous_export()
        self._queue: queue.Queue[tuple[RequestRecord, bool] | None] = queue.Queue(maxsize=max_waiting)
        self._waiting: dict[str, threading.Event] = {}
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="request-writer", daemon=True)
        self._closing = threading.Event()
        self.replayed = self._replay()
        self._thread.start()

    @staticmethod
    def _own(outbox: Path) -> IO[str]:
        handle = (outbox / ".lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise OutboxInUse(f"the request outbox {outbox} is in use by another gateway: give each gateway its "
                              "own (config key gateway.outbox_dir)") from None
        return handle

    def _path(self, request_id: str) -> Path:
        return self.outbox / f"{request_id}.json"

    def _replay(self) -> int:
        """Queue what a killed gateway left (oldest first); these are checked against the store before writing."""
        left = sorted(self.outbox.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for path in left:
            try:
                record = RequestRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as err:
                log.error("outbox file %s cannot be read (%s); left in place", path, err)
                continue
            self._track(record.request_id)
            self._queue.put((record, True))
        if left:
            log.info("writing %d request record(s) left in %s by an earlier gateway", len(left), self.outbox)
        return len(left)

    def _track(self, request_id: str) -> None:
        with self._guard:
            self._waiting[request_id] = threading.Event()

    def submit(self, record: RequestRecord) -> None:
        """Put the record in the outbox and queue it; blocks while `max_waiting` records wait (none is dropped)."""
        fd, staging = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.outbox)
        with os.fdopen(fd, "w") as fh:
            json.dump(record.to_json(), fh)
        os.replace(staging, self._path(record.request_id))
        self._track(record.request_id)
        self._queue.put((record, False))

    def wait_written(self, request_id: str, timeout: float) -> bool:
        """Wait until a queued request is in the store; True if it is not (or no longer) waiting."""
        with self._guard:
            event = self._waiting.get(request_id)
        return event is None or event.wait(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            record, replayed = item
            if not self._write(record, replayed):
                return  # closing: this record and those behind it stay in the outbox
            self._path(record.request_id).unlink(missing_ok=True)
            with self._guard:
                self._waiting.pop(record.request_id).set()

    def _write(self, record: RequestRecord, replayed: bool) -> bool:
        """Write until the store holds the record; False only if the gateway closes first."""
        delay = RETRY_FIRST_S
        while True:
            trace_id = None
            try:
                if replayed and request_log.find_trace(record.experiment_id, record.request_id):
                    return True
                trace_id = request_log.write_record(record)
                if request_log.is_complete(trace_id, record.request_id):
                    return True
                problem = "the store does not hold it after the write"
            except Exception as err:  # noqa: BLE001 - any store failure is retried; the record must not be lost
                problem = str(err)
            if trace_id:
                request_log.discard_trace(record.experiment_id, trace_id)
            log.warning("request %s not recorded (%s); retrying in %.1f s", record.request_id, problem, delay)
            replayed = True  # a retry first checks whether an earlier attempt landed after all
            if self._closing.wait(delay):
                return False
            delay = min(delay * 2, RETRY_MAX_S)

    def close(self, timeout: float) -> int:
        """Write what is queued (up to `timeout` seconds), stop, and return how many records stay in the outbox."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._closing.set()
        self._thread.join(RETRY_MAX_S)
        left = len(list(self.outbox.glob("*.json")))
        if left:
            log.warning("%d request record(s) not yet written stay in %s; the next gateway writes them", left,
                        self.outbox)
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        return left

