"""Peak memory of a whole `ragtune run` from cold, per stage, against the code of another commit.

Runs `python -m flows run --config <config>` as a user does (a fresh process, private stores and
caches, a private copy of the data), sampling the resident memory of the process tree every 0.1 s.
Prints the peak RSS of the tree (the number a machine must have), the peak of each stage (from the
stage windows of the run's MLflow child runs), the wall time, the training throughput of each
finetune (tokens/s) and whether the candidates' scores equal the baseline's.

`--against REV` runs the same config first with the code of git revision REV (a temporary worktree,
the same virtualenv) and prints ratios ours/baseline. The converted base model is shared (it is not
what is measured); everything else is built from cold by both.

    .venv/bin/python benchmarks/bench_memory.py --config configs/default.yaml --against HEAD~3
    .venv/bin/python benchmarks/bench_memory.py --config configs/xquad.yaml

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
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCORES = ("f1", "exact_match", "accuracy", "macro_f1", "rouge")


def private_config(base: Path, work: Path) -> Path:
    raw = yaml.safe_load(base.read_text())
    data = Path(raw["data"]["path"])
    data = data if data.is_absolute() else (ROOT / data).resolve()
    copy = work / "data" / data.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if data.is_dir() else shutil.copy)(data, copy)
    raw["data"]["path"] = str(copy)
    raw["model_cache"] = str(ROOT / ".cache" / "models")
    raw["cache_root"] = str(work / "cache")
    raw.setdefault("index", {})["root"] = str(work / "index")
    raw.setdefault("finetune", {})["output_root"] = str(work / "adapters")
    raw["mlflow"] = {**raw.get("mlflow", {}), "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    return work / "config.yaml"


@dataclass
class Timeline:
    """(seconds since start, RSS of the whole process tree in bytes), sampled in a thread."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.time()
        self._thread.start()

    def _run(self) -> None:
        root = psutil.Process(self.pid)
        while not self._stop.wait(0.1):
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in tree:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append((time.time(), total))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0) / 2**30


@dataclass
class Result:
    wall: float
    peak_gib: float
    stages: dict[str, float]
    seconds: dict[str, float]
    tokens_per_second: dict[str, float]
    scores: dict[str, float]


def run_once(code_root: Path, config: Path, log: Path) -> Result:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL")}
    env["PYTHONPATH"] = str(code_root)
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "flows", "run", "--config", str(config)], cwd=code_root,
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        timeline = Timeline(process.pid)
        code = process.wait()
    wall = time.perf_counter() - started
    timeline.stop()
    if code != 0:
        raise SystemExit(f"run with {code_root} failed:\n{log.read_text()[-3000:]}")
    return _collect(config, timeline, wall)


def _collect(config: Path, timeline: Timeline, wall: float) -> Result:
    from mlflow import MlflowClient

    raw = yaml.safe_load(config.read_text())
    client = MlflowClient(tracking_uri=raw["mlflow"]["tracking_uri"], registry_uri=raw["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name(raw["mlflow"]["experiment"])
    parent = client.search_runs([experiment.experiment_id], "tags.`ragtune.flow` = 'retrain'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    stages = {r.info.run_name: timeline.peak(r.info.start_time / 1000, r.info.end_time / 1000)
              for r in sorted(children, key=lambda r: r.info.start_time)}
    seconds = {r.info.run_name: (r.info.end_time - r.info.start_time) / 1000 for r in children}
    speed = {r.info.run_name: r.data.metrics["tokens_per_second"] for r in children
             if "tokens_per_second" in r.data.metrics}
    scores = {k: v for k, v in parent.data.metrics.items() if k.split(".")[-1] in SCORES}
    return Result(wall, timeline.peak(), stages, seconds, speed, scores)


def _report(label: str, result: Result, baseline: Result | None) -> None:
    def ratio(ours: float, theirs: float | None) -> str:
        return f" ({ours / theirs:.2f}x)" if theirs else ""

    peak = ratio(result.peak_gib, baseline and baseline.peak_gib)
    print(f"{label}: wall {result.wall:.0f} s{ratio(result.wall, baseline and baseline.wall)}, "
          f"peak RSS of the process tree {result.peak_gib:.2f} GiB{peak}")
    for stage, gib in result.stages.items():
        theirs = baseline.stages.get(stage) if baseline else None
        took = result.seconds[stage]
        print(f"  {stage:24s} peak {gib:5.2f} GiB{ratio(gib, theirs)}  {took:6.1f} s"
              f"{ratio(took, baseline.seconds.get(stage) if baseline else None)}")
    for stage, tps in result.tokens_per_second.items():
        theirs = baseline.tokens_per_second.get(stage) if baseline else None
        print(f"  {stage:24s} training {tps:6.0f} tokens/s{ratio(tps, theirs)}")
    if baseline:
        same = result.scores == baseline.scores
        print(f"  candidate scores equal to the baseline's: {same}")
        if not same:
            for key in sorted(set(result.scores) | set(baseline.scores)):
                print(f"    {key:28s} ours {result.scores.get(key, float('nan')):.4f} "
                      f"baseline {baseline.scores.get(key, float('nan')):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--against", metavar="REV", help="git revision whose code runs the same config first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        baseline = None
        if args.against:
            tree = Path(tmp) / "baseline-code"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                work = Path(tmp) / "baseline"
                work.mkdir()
                baseline = run_once(tree, private_config(ROOT / args.config, work), work / "run.log")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
            _report(f"baseline {args.against}", baseline, None)
        work = Path(tmp) / "ours"
        work.mkdir()
        ours = run_once(ROOT, private_config(ROOT / args.config, work), work / "run.log")
        _report(f"{args.config}, this code", ours, baseline)


if __name__ == "__main__":
    main()
