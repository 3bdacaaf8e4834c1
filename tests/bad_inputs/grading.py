"""Run a catalogue case the way a user meets it and grade what the user saw.

In process (typer's CliRunner on flows.cli.app, so that one temporary Prefect server serves the whole
catalogue) or as a real `ragtune` process. Everything the user would see is kept: the CLI's stdout and stderr,
what loggers (Prefect's console handler) write to the process's file descriptors 1 and 2, and, where an
exception escapes, the traceback Python would print.

Grades:
  good  exit status 2, exactly one line starting `error:`, the message holds every expected fragment, no
        traceback, the message not repeated, no Prefect error noise, nothing indexed, trained or registered
  weak  exit status 2 and no traceback, but one of the other conditions fails
  bad   any other exit status (0: the input was accepted silently), or a traceback
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.bad_inputs.catalogue import ROOT, Case, Workspace

ReadFds = Callable[[], tuple[str, str]]  # what fds 1 and 2 received since the last call (pytest: capfd.readouterr)
SUBPROCESS_TIMEOUT_S = 300
REPEAT_KEY_CHARS = 100  # this much of the message's first line is looked for elsewhere in the output
PREFECT_NOISE = re.compile(r"\|\s*(ERROR|CRITICAL)\s*\||Finished in state (Failed|Crashed)|\bCrashed\(")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


@dataclass
class Outcome:
    exit_code: int
    streams: dict[str, str]  # name -> text: stdout, stderr (the CLI's), fd1, fd2 (loggers), traceback
    seconds: float
    side_effects: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.streams.values())


@dataclass(frozen=True)
class Grade:
    case: str
    grade: str  # good | weak | bad
    why: str
    seconds: float


@contextmanager
def captured_fds() -> Iterator[ReadFds]:
    """File descriptors 1 and 2 redirected into temporary files (what pytest's capfd does, for the grader script);
    yields the function that reads and clears them."""
    with tempfile.TemporaryFile(mode="w+b") as out, tempfile.TemporaryFile(mode="w+b") as err:
        files = {1: out, 2: err}
        saved = {fd: os.dup(fd) for fd in files}

        def read() -> tuple[str, str]:
            texts = []
            for fh in files.values():
                fh.seek(0)
                texts.append(fh.read().decode("utf-8", errors="replace"))
                fh.seek(0)
                fh.truncate()
            return texts[0], texts[1]

        for fd, fh in files.items():
            os.dup2(fh.fileno(), fd)
        try:
            yield read
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def _on_a_console_stream(handler: logging.Handler) -> bool:
    """A stream handler writing to a file-descriptor stream (stderr, or pytest's stand-in for it): not a log file,
    not an in-memory capture (pytest's caplog), not logging.lastResort (which follows sys.stderr anyway)."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler) \
            or isinstance(getattr(type(handler), "stream", None), property):
        return False
    try:
        handler.stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


@contextmanager
def loggers_on_fd2() -> Iterator[None]:
    """Point every logging stream handler (Prefect's console handler among them) at file descriptor 2 itself.

    Those handlers keep the `sys.stderr` object of their configuration time; under pytest that is a capture
    object that writes past descriptor 2. A user's terminal gets their output on descriptor 2, so for the
    duration they write there."""
    fd2 = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
    handlers = [h for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                if isinstance(logger, logging.Logger) for h in logger.handlers if _on_a_console_stream(h)]
    saved = [(h, h.stream, getattr(getattr(h, "console", None), "file", None)) for h in handlers]
    for h in handlers:
        h.stream = fd2
        if getattr(h, "console", None) is not None:
            h.console.file = fd2
    try:
        yield
    finally:
        fd2.flush()
        for h, stream, console_file in saved:
            h.stream = stream
            if console_file is not None:
                h.console.file = console_file


def run_in_process(case: Case, ws: Workspace, read_fds: ReadFds) -> Outcome:
    """`ragtune <args>` through typer's CliRunner, in the workspace as working directory."""
    from typer.testing import CliRunner

    from flows.cli import app

    read_fds()  # drop what earlier output left
    cwd = Path.cwd()
    os.chdir(ws.tmp)
    start = time.perf_counter()
    try:
        with loggers_on_fd2():
            result = CliRunner().invoke(app, ws.argv(case), env={"COLUMNS": "160"})
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - start
    fd1, fd2 = read_fds()
    streams = {"stdout": result.stdout, "stderr": result.stderr, "fd1": fd1, "fd2": fd2}
    exit_code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What Python prints for an exception that escapes the command (CliRunner keeps it instead).
        streams["traceback"] = "".join(traceback.format_exception(result.exception))
        exit_code = 1
    return Outcome(exit_code, streams, seconds, side_effects(ws))


def run_subprocess(case: Case, ws: Workspace) -> Outcome:
    """A real `ragtune` process, as a user starts it (its own temporary Prefect server, its own streams)."""
    ragtune = Path(sys.executable).parent / "ragtune"
    env = {**os.environ, "COLUMNS": "160", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    result = subprocess.run([str(ragtune), *ws.argv(case)], cwd=ws.tmp, capture_output=True, text=True,
                            errors="replace", timeout=SUBPROCESS_TIMEOUT_S, env=env)
    return Outcome(result.returncode, {"stdout": result.stdout, "stderr": result.stderr},
                   time.perf_counter() - start, side_effects(ws))


def side_effects(ws: Workspace) -> list[str]:
    """What the command left behind that only a run on good input should: index versions, adapters, registered
    model versions in the workspace's MLflow store."""
    found = []
    if ws.index_root.is_dir() and any(p.name.startswith("idx-") or p.name == "CURRENT"
                                      for p in ws.index_root.iterdir()):
        found.append("index")
    if ws.adapter_root.is_dir() and any(p.name != ".locks" for p in ws.adapter_root.iterdir()):  # checkpoints too
        found.append("adapter")
    if ws.mlflow_db.is_file():
        from mlflow import MlflowClient

        uri = f"sqlite:///{ws.mlflow_db}"
        if MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions():
            found.append("registry")
    return found


def _squash(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class ErrorMessage:
    count: int  # lines that start with `error:`
    first_line: str  # the text of the first such line, after `error:`
    text: str  # from that line to the end of its stream (a long message wraps, a report continues), squashed


def error_message(outcome: Outcome) -> ErrorMessage:
    count, first_line, message = 0, "", ""
    for name, text in outcome.streams.items():
        lines = ANSI.sub("", text).splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
        count += len(starts)
        if starts and not message and name != "traceback":
            first_line = _squash(lines[starts[0]][len("error:"):])
            message = _squash(" ".join(lines[starts[0]:]))[len("error:"):].strip()
    return ErrorMessage(count, first_line, message)


def grade(case: Case, ws: Workspace, outcome: Outcome) -> Grade:
    """Grade one outcome; `why` says every condition that failed."""
    text = outcome.text
    if "Traceback" in text:
        return Grade(case.id, "bad", f"traceback (exit {outcome.exit_code})", outcome.seconds)
    if outcome.exit_code != 2:
        what = "accepted silently" if outcome.exit_code == 0 else "not the exit status of a user error"
        return Grade(case.id, "bad", f"exit {outcome.exit_code}: {what}", outcome.seconds)
    problems = []
    message = error_message(outcome)
    if message.count != 1:
        problems.append(f"{message.count} lines start with 'error:'")
    missing = [" | ".join(alts) for alts in ws.fragments(case) if not any(alt in message.text for alt in alts)]
    if message.count and missing:
        problems.append("missing " + "; ".join(repr(m) for m in missing))
    key = message.first_line[:REPEAT_KEY_CHARS]
    outside = _squash(ANSI.sub("", text)).replace(message.text, "", 1)  # a long path may recur within the message
    if key and key in outside:
        problems.append("message repeated")
    noise = [line.strip() for line in ANSI.sub("", text).splitlines() if PREFECT_NOISE.search(line)]
    if noise:
        problems.append(f"{len(noise)} Prefect error line(s), e.g. {noise[0][:90]!r}")
    forbidden = [f for f in case.forbid if f in text]
    if forbidden:
        problems.append(f"raw {forbidden!r} in the output")
    unexpected = [s for s in outcome.side_effects if s not in case.allow]
    if unexpected:
        problems.append(f"left behind: {', '.join(unexpected)}")
    if problems:
        return Grade(case.id, "weak", "; ".join(problems), outcome.seconds)
    return Grade(case.id, "good", "", outcome.seconds)


def show(outcome: Outcome, limit: int = 3000) -> str:
    """The outcome's output for an assertion message: each stream that has text, its end kept."""
    return "\n".join(f"--- {name} ---\n{text[-limit:]}" for name, text in outcome.streams.items() if text.strip())
