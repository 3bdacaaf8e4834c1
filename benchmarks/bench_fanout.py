"""Benchmark: the Dask fan-out of the finetunes and candidate evaluations against the sequential pipeline.

Runs `ragtune run` as a user does (a fresh process, private stores, a private copy of the data) three
times from cold: sequential, then `scale.dask.enabled` with 1 and with 2 LocalCluster workers
(`threads_per_worker` = cores / workers). For each it prints the wall time and its ratio to the
sequential run, the peak resident memory of the main process and of each Dask worker (sampled every
0.2 s over the process tree), and whether the candidate table equals the sequential one (every
`<candidate>.<metric>` of the parent run except timing and cost) and the adapters' held-out losses too.

From the sequential run's own stage times (MLflow child runs) it also derives what a cluster with one
node per independent task would take: the index, then the longest chain of a finetune and the
evaluation that needs it, or of an evaluation that needs none (plus the promote stage).

Run: .venv/bin/python benchmarks/bench_fanout.py [--config configs/ci.yaml] [--data data/demo]
Do not run it while tests or other benchmarks run: they share the cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_METRICS = ("latency", "seconds", "cost", "per_second")


def _config(base: Path, data: Path, work: Path, dask: dict | None) -> Path:
    raw = yaml.safe_load(base.read_text())
    shutil.copytree(data, work / "data")
    raw["data"]["path"] = str(work / "data")
    raw["model_cache"] = str(ROOT / ".cache" / "models")  # the converted base model: not what is measured
    raw["cache_root"] = str(work / "cache")
    raw["index"]["root"] = str(work / "index")
    raw["finetune"]["output_root"] = str(work / "adapters")
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    if dask:
        raw["scale"] = {"dask": {"enabled": True, **dask}}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    return work / "config.yaml"


class PeakMemory:
    """Peak RSS per process of a process tree, sampled in a thread."""

    def __init__(self, pid: int):
        self.root, self.peaks, self.names = psutil.Process(pid), {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                try:
                    rss, cmd = proc.memory_info().rss, " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
                self.names.setdefault(proc.pid, cmd)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        workers = sorted((pid for pid, cmd in self.names.items() if "spawn_main" in cmd or "forkserver" in cmd),
                         key=lambda pid: -self.peaks[pid])
        report = {"main": self.peaks.get(self.root.pid, 0) / 2**30}
        for i, pid in enumerate(workers, start=1):
            report[f"worker {i}"] = self.peaks[pid] / 2**30
        return report


def _results(config: Path, log: Path) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The parent run's candidate table, the adapters' held-out losses, and each stage's seconds."""
    from mlflow import MlflowClient

    raw = yaml.safe_load(config.read_text())
    client = MlflowClient(tracking_uri=raw["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name(raw["mlflow"]["experiment"])
    if experiment is None:
        raise SystemExit(f"no experiment {raw['mlflow']['experiment']} in {raw['mlflow']['tracking_uri']}:\n"
                         f"{log.read_text()[-3000:]}")
    parent = client.search_runs([experiment.experiment_id], "tags.`ragtune.flow` = 'retrain'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    table = {k: v for k, v in parent.data.metrics.items() if "." in k and not any(p in k for p in RUNTIME_METRICS)}
    losses = {r.info.run_name: r.data.metrics.get("eval_loss") for r in children
              if r.info.run_name.startswith("finetune-")}
    seconds = {r.info.run_name: (r.info.end_time - r.info.start_time) / 1000 for r in children}
    return table, losses, seconds


def _critical_path(seconds: dict[str, float]) -> float:
    """Wall time with one node per independent task: index, the longest dependent chain, promote."""
    chains = [seconds.get("candidate-base", 0), seconds.get("candidate-rag", 0),
              seconds.get("finetune-closed_book", 0) + seconds.get("candidate-finetuned", 0),
              seconds.get("finetune-raft", 0) + seconds.get("candidate-hybrid", 0)]
    return seconds.get("validate", 0) + seconds.get("index", 0) + max(chains) + seconds.get("promote", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ci.yaml")
    parser.add_argument("--data", default="data/demo")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    setups = [("sequential", None), ("dask, 1 worker", {"workers": 1, "threads_per_worker": cores}),
              ("dask, 2 workers", {"workers": 2, "threads_per_worker": max(1, cores // 2)})]
    rows, baseline = [], None
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        for label, dask in setups:
            work = Path(tmp) / label.replace(" ", "").replace(",", "-")
            work.mkdir()
            config = _config(ROOT / args.config, ROOT / args.data, work, dask)
            start = time.perf_counter()
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the config's store
            process = subprocess.Popen([sys.executable, "-m", "flows", "run", "--config", str(config)], cwd=ROOT,
                                       env=env, stdout=(work / "run.log").open("w"), stderr=subprocess.STDOUT)
            memory = PeakMemory(process.pid)
            code = process.wait()
            wall = time.perf_counter() - start
            peaks = memory.stop()
            if code != 0:
                raise SystemExit(f"{label} failed:\n{(work / 'run.log').read_text()[-3000:]}")
            table, losses, seconds = _results(config, work / "run.log")
            if baseline is None:
                baseline = (wall, table, losses, seconds)
            rows.append((label, wall, peaks, table == baseline[1], losses == baseline[2], losses))
    seq_wall, _, _, seq_seconds = baseline
    print(f"{args.config} on {args.data}, {cores} cores")
    for label, wall, peaks, same_table, same_losses, losses in rows:
        memory = ", ".join(f"{name} {gib:.2f} GiB" for name, gib in peaks.items())
        print(f"{label:17s} wall {wall:6.1f} s  ratio {wall / seq_wall:.2f}  peak RSS: {memory}")
        print(f"{'':17s} same candidate table: {same_table}; same adapter losses: {same_losses} {losses}")
    print("sequential stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(seq_seconds.items())))
    print(f"one node per independent task (e.g. 4 nodes): ~{_critical_path(seq_seconds):.0f} s of stages, "
          f"against {sum(seq_seconds.values()):.0f} s of stages in sequence")


if __name__ == "__main__":
    main()
