"""Benchmark: what the gateway adds over calling the registered model directly, and its throughput.

Registers the CI-sized base SLM twice (champion and challenger: distinct versions, nothing trained)
in a temporary MLflow store, then:

- direct: the champion's pyfunc, loaded in this process, answers N questions one at a time;
- gateway: `ragtune gateway` (a separate process on 127.0.0.1, split mode, recording every request
  as an MLflow trace) answers the same N questions one at a time over HTTP, user ids chosen so
  every request goes to the champion; per request, added = gateway round trip − the model's own
  answer time reported in the response;
- throughput: 1, 4 and 8 concurrent clients, M requests each level, requests/s and p50/p95.

Also what a crash loses: the gateway is killed (SIGKILL) right after a burst of answered requests;
the burst's requests in the store are counted before and after a new gateway starts on the same
request outbox (tasks.request_writer), and the records written twice.

Run: .venv/bin/python benchmarks/bench_gateway.py [--questions 40] [--load 96]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()
QUESTIONS = ["When does the Kellsport office open?", "How heavy is the TideWatch T4 buoy?",
             "What does the SaltLog SL-9 measure?", "Who founded Brightwater Instruments?"]


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def register(work: Path) -> Path:
    import mlflow

    from flows.pipeline import prepare
    from tasks.candidates import CandidateBundle
    from tasks.promotion import log_and_register

    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["model_cache"] = str(ROOT / ".cache" / "models")
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    raw["gateway"] = {"challenger_share": 0.0}  # every request to the champion: direct vs gateway, same model
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    for tokens, promote in ((8, True), (6, False)):
        cfg = prepare(str(config), [f"generation.max_new_tokens={tokens}"], None)
        with mlflow.start_run(run_name=f"register-{tokens}"):
            log_and_register(CandidateBundle("base", None, None, {"tokens": str(tokens)}), cfg, promote)
    return config


def start_gateway(config: Path, work: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    process = subprocess.Popen([sys.executable, "-m", "flows", "gateway", "--config", str(config), "--port",
                                str(port), "--set", f"gateway.outbox_dir={work / 'outbox'}"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if requests.get(f"{url}/ready", timeout=2).ok:
                return process, url
        except requests.RequestException:
            time.sleep(1)
    raise SystemExit("gateway did not become ready")


def ask(url: str, question: str, user: str) -> tuple[float, float]:
    start = time.perf_counter()
    body = requests.post(f"{url}/ask", json={"question": question, "user_id": user}, timeout=120).json()
    return (time.perf_counter() - start) * 1000, body["latency_ms"]


def recorded(config: Path) -> list[str]:
    """Request ids as stored, one per trace."""
    import mlflow

    from flows.pipeline import prepare
    from tasks.request_log import REQUEST_ID

    cfg = prepare(str(config), [], None)
    experiment_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    return [t.info.tags.get(REQUEST_ID) for t in mlflow.search_traces(locations=[experiment_id],
                                                                     max_results=100_000, return_type="list")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--load", type=int, default=96, help="requests per concurrency level")
    args = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        config = register(work)
        model = mlflow.pyfunc.load_model("models:/ragtune-ci@champion").unwrap_python_model().answerer
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]
        model.answer(questions[:1])  # warm up
        direct = []
        for q in questions:
            start = time.perf_counter()
            model.answer([q])
            direct.append((time.perf_counter() - start) * 1000)
        del model

        process, url = start_gateway(config, work)
        try:
            ask(url, questions[0], "warm")
            pairs = [ask(url, q, f"u{i}") for i, q in enumerate(questions)]
            added = [total - own for total, own in pairs]
            print(f"one client, {len(questions)} questions, recording on")
            print(f"  direct pyfunc answer p50 {statistics.median(direct):.1f} ms")
            print(f"  gateway round trip p50 {statistics.median(t for t, _ in pairs):.1f} ms")
            print(f"  added by the gateway (round trip − the model's own time, per request): p50 "
                  f"{statistics.median(added):.2f} ms, p95 {_percentile(added, 95):.2f} ms")
            ratio = statistics.median(t for t, _ in pairs) / statistics.median(direct)
            print(f"  gateway p50 / direct p50 = {ratio:.3f}")
            for clients in (1, 4, 8):
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=clients) as pool:
                    times = [t for t, _ in pool.map(lambda i: ask(url, questions[i % len(questions)], f"c{i}"),
                                                    range(args.load))]
                seconds = time.perf_counter() - start
                print(f"{clients} clients: {args.load / seconds:.2f} requests/s, p50 "
                      f"{statistics.median(times):.0f} ms, p95 {_percentile(times, 95):.0f} ms")
            burst = [requests.post(f"{url}/ask", json={"question": q, "user_id": "burst"}, timeout=120).json()[
                "request_id"] for q in questions[:20]]
            os.killpg(process.pid, signal.SIGKILL)  # a crash right after the burst was answered
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=60)
        before = len(set(burst) & set(recorded(config)))
        process, url = start_gateway(config, work)  # the same outbox: it writes what the killed one left
        try:
            while list((work / "outbox").glob("*.json")):
                time.sleep(0.5)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        stored = recorded(config)
        after = len(set(burst) & set(stored))
        twice = sum(stored.count(rid) > 1 for rid in burst)
        print(f"crash (SIGKILL) right after 20 answered requests: {before} of 20 in the store at the crash, "
              f"{after} of 20 after a new gateway started on its outbox ({20 - after} lost, {twice} written twice)")


if __name__ == "__main__":
    main()
