"""Benchmark: what a re-run costs when little or nothing changed, against the cold run.

Runs `ragtune run` as a user does (a fresh process each time, its temporary Prefect server
included) on a private copy of the data with private stores (MLflow, index, adapters, stage
cache), five times:

1. cold             - empty stores: everything is computed;
2. unchanged        - same data, same config: every stage should be reused, nothing registered;
3. edited document  - one sentence appended to one document (one whose questions are not in the
                      test split, when there is one): re-embeds its chunks, retrains the adapter
                      that reads passages, re-evaluates the candidates that retrieve;
4. edited train question - one train question reworded: retrains both adapters, re-evaluates the
                      candidates that use one;
5. new test question - one question added to the test split: retrains nothing, re-evaluates every
                      candidate (and re-scores the champion on the new evaluation set).

Prints each run's wall time (process start to exit), its ratio to the cold run, the model
versions registered so far, and the run's own account of what it recomputed and reused.

Run: .venv/bin/python benchmarks/bench_rerun.py [--config configs/default.yaml] [--data data/demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def edit_document(data: Path) -> str:
    docs, qa = _jsonl(data / "documents.jsonl"), _jsonl(data / "qa.jsonl")
    tested = {q["doc_id"] for q in qa if q["split"] == "test"}
    doc = next((d for d in docs if d["doc_id"] not in tested), docs[0])
    doc["text"] += " This section was reviewed in November 2026."
    _write_jsonl(data / "documents.jsonl", docs)
    return f"document {doc['doc_id']} ({'no' if doc['doc_id'] not in tested else 'has'} test questions)"


def edit_train_question(data: Path) -> str:
    qa = _jsonl(data / "qa.jsonl")
    row = next(q for q in qa if q["split"] == "train")
    row["question"] = row["question"].rstrip("?") + ", exactly?"
    _write_jsonl(data / "qa.jsonl", qa)
    return f"train question {row['qa_id']}"


def add_test_question(data: Path) -> str:
    qa = _jsonl(data / "qa.jsonl")
    source = next(q for q in qa if q["split"] == "train")
    new = {**source, "qa_id": "bench-new-test", "question": "As asked again: " + source["question"], "split": "test"}
    _write_jsonl(data / "qa.jsonl", [*qa, new])
    return f"test question {new['qa_id']} (a reworded train question)"


def run(config: str, work: Path, data: Path) -> float:
    overrides = {"data.path": data, "mlflow.tracking_uri": f"sqlite:///{work}/mlflow.db",
                 "mlflow.artifact_location": work / "artifacts", "index.root": work / "index",
                 "finetune.output_root": work / "adapters", "cache_root": work / "cache",
                 "model_cache": ROOT / ".cache" / "models"}
    command = [sys.executable, "-m", "flows", "run", "--config", config]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"ragtune run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def tracked(work: Path, experiment: str, model_name: str) -> tuple[int, str]:
    """Model versions registered so far, and the latest run's own account of what it recomputed."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{work}/mlflow.db"
    client = MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(experiment)
    latest = client.search_runs([exp.experiment_id], "tags.what_changed != ''", order_by=["start_time DESC"],
                                max_results=1)[0]
    return len(client.search_model_versions(f"name = '{model_name}'")), latest.data.tags["what_changed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--data", default="data/demo", help="a directory of documents.jsonl + qa.jsonl")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tasks.settings import load_config

    cfg = load_config(ROOT / args.config)
    steps = [("cold", None), ("unchanged", None), ("edited document", edit_document),
             ("edited train question", edit_train_question), ("new test question", add_test_question)]
    with tempfile.TemporaryDirectory(prefix="bench-rerun-") as tmp:
        work, data = Path(tmp), Path(tmp) / "data"
        shutil.copytree(ROOT / args.data, data)
        rows, cold = [], None
        for name, change in steps:
            what = change(data) if change else ("empty stores" if name == "cold" else "nothing")
            seconds = run(args.config, work, data)
            cold = cold or seconds
            rows.append((name, what, seconds, seconds / cold,
                         *tracked(work, cfg.mlflow.experiment, cfg.champion.model_name)))
            print(f"{name:<22} {seconds:8.1f} s  {seconds / cold:6.1%} of cold  ({what})", flush=True)
    print(f"\nconfig {args.config}, data {args.data}\n")
    print("| run | change | wall s | vs cold | versions registered | what the run says |")
    print("|---|---|---:|---:|---:|---|")
    for name, what, seconds, ratio, versions, said in rows:
        print(f"| {name} | {what} | {seconds:.1f} | {ratio:.1%} | {versions} | {said} |")


if __name__ == "__main__":
    main()
