"""`ragtune ui`: seconds until the page and the runs API answer, and the processes and memory it holds.

Starts `python -m flows ui --config <config> --port <free port>` as a user's `ragtune ui` (its own process
group, on 127.0.0.1), polls `/` and `/ajax-api/2.0/mlflow/experiments/search` until both answer 200, then
counts the processes of its tree and their resident memory after the server has settled, and stops it.
`--against REV` does the same first with the code of git revision REV (a temporary worktree) and prints
ratios ours/baseline. The store is the config's (run `make demo` first for a populated one).

    .venv/bin/python benchmarks/bench_ui.py --against HEAD~1
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SETTLE_S = 5.0


@dataclass
class UiStart:
    ready_s: float
    processes: int
    rss_gib: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def measure(code_root: Path, config: Path, store: str, timeout_s: float = 180) -> UiStart:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
    env["PYTHONPATH"] = str(code_root)
    env["MLFLOW_TRACKING_URI"] = store  # the same store for both: each code runs in its own directory
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "flows", "ui", "--config", str(config), "--port", str(port)],
                               cwd=code_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        while not (_answers(f"{base}/") and _answers(f"{base}/ajax-api/2.0/mlflow/experiments/search?max_results=5")):
            if process.poll() is not None or time.perf_counter() - started > timeout_s:
                raise SystemExit(f"ragtune ui ({code_root}) did not answer within {timeout_s:.0f} s")
            time.sleep(0.2)
        ready = time.perf_counter() - started
        time.sleep(SETTLE_S)
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in tree if p.is_running())
        return UiStart(ready, len(tree), rss / 2**30)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _store(config: Path) -> str:
    """The config's tracking URI with a relative SQLite path made absolute (MLFLOW_TRACKING_URI wins)."""
    import yaml

    uri = os.environ.get("MLFLOW_TRACKING_URI") or yaml.safe_load(config.read_text())["mlflow"].get(
        "tracking_uri", "sqlite:///mlruns/mlflow.db")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(ROOT / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--against", metavar="REV", help="git revision whose `ragtune ui` is measured first")
    args = parser.parse_args()
    config = (ROOT / args.config).resolve()
    store = _store(config)
    baseline = None
    if args.against:
        with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
            tree = Path(tmp) / "code"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                baseline = measure(tree, config, store)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        print(f"baseline {args.against}: answers after {baseline.ready_s:.1f} s; {baseline.processes} processes, "
              f"{baseline.rss_gib:.2f} GiB resident")
    ours = measure(ROOT, config, store)
    ratio = (f" ({ours.ready_s / baseline.ready_s:.2f}x time, {ours.rss_gib / baseline.rss_gib:.2f}x memory)"
             if baseline else "")
    print(f"this code: answers after {ours.ready_s:.1f} s; {ours.processes} processes, {ours.rss_gib:.2f} GiB "
          f"resident{ratio}")


if __name__ == "__main__":
    main()
