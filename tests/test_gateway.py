"""`ragtune gateway` on 127.0.0.1 with two registered versions of the CI-sized model: the split, stickiness,
shadow mode, a bounded concurrent load with an alias moved mid-traffic, and feedback, all checked against
the MLflow traces the gateway wrote."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT
from tests.servers import RAGTUNE, free_port, responds, start, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.server]
SHARE = 0.3


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """A config whose registry holds champion v1, challenger v2 and a spare v3 (the base SLM with different
    answer lengths: distinct versions without training anything)."""
    import mlflow
    from mlflow import MlflowClient

    from flows.pipeline import prepare
    from tasks.candidates import CandidateBundle
    from tasks.promotion import log_and_register

    work = tmp_path_factory.mktemp("gateway")
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["model_cache"] = str(ROOT / ".cache" / "models")
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    raw["gateway"] = {"challenger_share": SHARE, "alias_poll_seconds": 1.0}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    for tokens, promote in ((8, True), (6, False), (5, False)):
        cfg = prepare(str(work / "config.yaml"), [f"generation.max_new_tokens={tokens}"], None)
        with mlflow.start_run(run_name=f"register-{tokens}"):
            log_and_register(CandidateBundle("base", None, None, {"tokens": str(tokens)}), cfg, promote)
    MlflowClient().set_registered_model_alias("ragtune-ci", "challenger", "2")
    return work


def _start(work: Path, *args: str, outbox: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A gateway on a free port with its own request outbox (or the given one, to restart a killed gateway)."""
    port = free_port()
    outbox = outbox or work / f"outbox-{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    log = work / f"gateway-{port}.log"
    process = start([*RAGTUNE, "gateway", "--config", str(work / "config.yaml"), "--port", str(port),
                     "--set", f"gateway.outbox_dir={outbox}", *args], log, env)
    url = f"http://127.0.0.1:{port}"
    wait_for("the gateway", lambda: process.poll() is not None or responds(f"{url}/ready"), 180, 1)
    assert process.poll() is None, log.read_text()[-3000:]
    return process, url


@pytest.fixture(scope="module")
def split(registry):
    process, url = _start(registry)
    yield url
    stop(process)


def _ask(url: str, question: str, user: str | None = None) -> requests.Response:
    return requests.post(f"{url}/ask", json={"question": question, "user_id": user}, timeout=120)


def _stored_request_ids(work: Path) -> list[str]:
    """Request ids as stored, one per trace (load_requests drops duplicates, so it cannot show them)."""
    import mlflow

    from flows.pipeline import prepare
    from tasks.request_log import REQUEST_ID

    cfg = prepare(str(work / "config.yaml"), [], None)
    experiment_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    return [t.info.tags.get(REQUEST_ID) for t in mlflow.search_traces(locations=[experiment_id],
                                                                     max_results=100_000, return_type="list")]


def _traces(work: Path):
    import mlflow

    from flows.pipeline import prepare
    from tasks.request_log import load_requests

    cfg = prepare(str(work / "config.yaml"), [], None)
    return load_requests(mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id)


def test_split_is_within_binomial_tolerance_and_sticky_per_user(split):
    n = 120
    variants = Counter(_ask(split, "When does the Kellsport office open?", f"user-{i}").json()["variant"]
                       for i in range(n))
    sigma = math.sqrt(n * SHARE * (1 - SHARE))
    assert abs(variants["challenger"] - n * SHARE) < 4 * sigma, variants
    for user in ("alice", "bob", "carol"):
        seen = {_ask(split, f"Question {i} from {user}?", user).json()["variant"] for i in range(8)}
        assert len(seen) == 1, (user, seen)


def test_concurrent_load_with_an_alias_move_fails_nothing_and_records_each_request_once(split, registry):
    from mlflow import MlflowClient

    n = 150
    questions = [f"Load question number {i}: what does the buoy weigh?" for i in range(n)]

    def one(i: int) -> tuple[int, str, str]:
        r = _ask(split, questions[i], f"load-{i % 50}")
        body = r.json() if r.ok else {}
        return r.status_code, body.get("request_id", ""), body.get("model_version", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        time.sleep(5)
        MlflowClient().set_registered_model_alias("ragtune-ci", "challenger", "3")  # mid-traffic
        results = [f.result() for f in futures]
    assert Counter(code for code, _, _ in results) == {200: n}
    ids = [rid for _, rid, _ in results]
    assert len(set(ids)) == n
    deadline = time.monotonic() + 30
    while requests.get(f"{split}/ready").json()["challenger"]["version"] != "3":
        assert time.monotonic() < deadline, "the moved alias was not picked up"
        time.sleep(1)
    deadline = time.monotonic() + 60  # the gateway writes its record off the response path
    while not set(ids) <= set(recorded := _stored_request_ids(registry)) and time.monotonic() < deadline:
        time.sleep(2)
    counts = Counter(recorded)
    assert [counts[rid] for rid in ids] == [1] * len(ids)  # every request recorded, exactly once


def test_feedback_round_trips_to_the_request_record(split, registry):
    body = _ask(split, "How heavy is the TideWatch T4 buoy?", "rater").json()
    r = requests.post(f"{split}/feedback", json={"request_id": body["request_id"], "rating": 0.0,
                                                  "correct_answer": "212 kg", "user_id": "rater"}, timeout=60)
    assert r.status_code == 200
    row = _traces(registry).set_index("request_id").loc[body["request_id"]]
    assert row["rating"] == 0.0 and row["correct_answer"] == "212 kg" and row["variant"] == body["variant"]
    missing = requests.post(f"{split}/feedback", json={"request_id": "tr-unknown", "rating": 1.0}, timeout=60)
    assert missing.status_code == 404


def test_shadow_returns_the_champion_and_records_both(registry):
    process, url = _start(registry, "--mode", "shadow")
    try:
        before = set(_traces(registry)["request_id"])
        bodies = [_ask(url, f"Shadowed question {i}?", f"s-{i}").json() for i in range(5)]
    finally:
        stop(process)  # graceful: the shadow answers still queued are answered and recorded
    assert {b["variant"] for b in bodies} == {"champion"}
    recorded = _traces(registry)
    new = recorded[~recorded["request_id"].isin(before)]
    assert Counter(zip(new["variant"], new["shadow"], strict=True)) == {("champion", False): 5,
                                                                         ("challenger", True): 5}


def test_requests_answered_just_before_a_crash_are_written_by_the_next_gateway(registry):
    """SIGKILL right after the answers: what was not yet written waits in the outbox, and the next gateway on
    that outbox writes it, each request exactly once."""
    process, url = _start(registry)
    outbox = registry / f"outbox-{url.rsplit(':', 1)[1]}"
    try:
        ids = [_ask(url, f"Before the crash {i}?", f"k-{i}").json()["request_id"] for i in range(10)]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        stop(process)
    restarted, _ = _start(registry, outbox=outbox)
    try:
        wait_for("the outbox to be written", lambda: not list(outbox.glob("*.json")), 60, 1)
    finally:
        stop(restarted)
    counts = Counter(_stored_request_ids(registry))
    assert [counts[rid] for rid in ids] == [1] * len(ids)


def _rate_all(url: str, work: Path, good: dict[str, float], seed: int) -> None:
    """Simulated users: each answered request rated 1 with its variant's probability of a good answer."""
    import numpy as np

    rng = np.random.default_rng(seed)
    answered = _traces(work)
    answered = answered[~answered["shadow"]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda row: requests.post(f"{url}/feedback", timeout=60, json={
            "request_id": row[0], "rating": float(rng.random() < good[row[1]])}).status_code,
            zip(answered["request_id"], answered["variant"], strict=True)))
    assert set(codes) == {200}


def test_simulated_feedback_promotes_a_better_challenger_and_keeps_a_worse_one(split, registry):
    from flows.pipeline import prepare
    from tasks.ab_promotion import run_ab_report

    cfg = prepare(str(registry / "config.yaml"), [], None)
    _rate_all(split, registry, {"champion": 0.45, "challenger": 0.8}, seed=1)
    better = run_ab_report(cfg, since_hours=1.0, apply=False)
    assert better.decision.action == "promote", better.decision.reasons
    _rate_all(split, registry, {"champion": 0.8, "challenger": 0.45}, seed=2)  # the latest rating counts
    worse = run_ab_report(cfg, since_hours=1.0, apply=False)
    assert worse.decision.action == "keep", worse.decision.reasons


def test_ab_report_reads_the_feedback_and_moves_the_aliases(split, registry):
    """The report sees the gateway's requests and ratings; promote and rollback move the aliases, and the
    running gateway follows them."""
    from flows.pipeline import prepare
    from tasks.ab_promotion import apply_ab_decision, run_ab_report

    cfg = prepare(str(registry / "config.yaml"), ["ab.min_feedback_per_variant=1000"], None)
    report = run_ab_report(cfg, since_hours=1.0, apply=False)  # too little traffic for this policy
    assert report.requests["rating"].notna().sum() >= 1 and report.decision.action == "not_enough_data"
    assert any("of 1000 rated requests" in reason for reason in report.decision.reasons)

    promote = report.decision.__class__("promote", [], report.decision.summary, report.decision.comparison)
    assert apply_ab_decision(promote, "ragtune-ci") == "champion: version 1 -> 3"
    rollback = report.decision.__class__("rollback", [], report.decision.summary, report.decision.comparison)
    assert apply_ab_decision(rollback, "ragtune-ci").startswith("champion rolled back: version 3 -> 1")
    deadline = time.monotonic() + 30
    while "challenger" in (ready := requests.get(f"{split}/ready").json()) or ready["champion"]["version"] != "1":
        assert time.monotonic() < deadline, ready
        time.sleep(1)
    assert _ask(split, "Still answering after the rollback?", "after").json()["variant"] == "champion"


def test_a_corrected_answer_reaches_the_next_retrainings_data(tmp_path_factory):
    """A retrieving champion answers through the gateway; the user's correction becomes a validated train row."""
    import json

    import mlflow

    from flows.pipeline import prepare
    from tasks.ab_promotion import run_ab_report
    from tasks.candidates import CandidateBundle
    from tasks.data_loading import load_dataset
    from tasks.indexing import build_index
    from tasks.promotion import log_and_register
    from tasks.quarantine import validate_and_quarantine

    work = tmp_path_factory.mktemp("feedback")
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["model_cache"] = str(ROOT / ".cache" / "models")
    raw["data"] = {**raw["data"], "path": str(ROOT / "data" / "demo"), "feedback_path": str(work / "feedback.jsonl"),
                   "answer_type": "span"}  # validation checks the corrected answer is in its gold document
    raw["index"]["root"] = str(work / "index")
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{work}/mlflow.db",
                     "artifact_location": str(work / "artifacts")}
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = prepare(str(work / "config.yaml"), [], None)
    dataset = load_dataset(cfg.data)
    index = build_index(dataset.documents, dataset.fingerprint, cfg.index)
    with mlflow.start_run(run_name="register-rag"):
        log_and_register(CandidateBundle("rag", None, str(index.path), {"index": index.version}), cfg, promote=True)

    process, url = _start(work)
    try:
        body = _ask(url, "Who founded Brightwater Instruments?", "corrector").json()
        gold = body["sources"][0]
        text = dataset.documents.set_index("doc_id").at[gold, "text"]
        correction = " ".join(text.split()[:4])  # a span of the document the answer came from
        assert requests.post(f"{url}/feedback", timeout=60, json={
            "request_id": body["request_id"], "rating": 0.0, "correct_answer": correction}).status_code == 200
    finally:
        stop(process)

    report = run_ab_report(cfg, since_hours=1.0, apply=False)
    assert report.feedback_rows == 1
    row = json.loads((work / "feedback.jsonl").read_text().splitlines()[0])
    assert row == {"qa_id": f"feedback-{body['request_id']}", "question": "Who founded Brightwater Instruments?",
                   "answer": [correction], "doc_id": gold, "split": "train"}
    next_data = validate_and_quarantine(load_dataset(cfg.data), cfg)
    assert next_data.report.success
    qa = next_data.dataset.qa.set_index("qa_id")
    assert qa.at[row["qa_id"], "split"] == "train"
