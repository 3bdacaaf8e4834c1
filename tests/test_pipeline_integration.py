"""The real composite flow on the CI config: real Prefect runs, real MLflow store and registry,
real FAISS index, real SmolLM2 and MiniLM weights, on a slice of the demo data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from tests.conftest import ROOT, write_jsonl

pytestmark = pytest.mark.integration
STAGE_RUNS = {"validate", "index", "finetune-closed_book", "finetune-raft", "candidate-base", "candidate-finetuned",
              "candidate-rag", "candidate-hybrid", "promote"}
CANDIDATE_METRICS = {"exact_match", "f1", "exact_match_ci_low", "f1_ci_high", "string_similarity", "rouge", "bleu",
                     "semantic_similarity", "groundedness", "hallucination_rate", "latency_p50_ms", "latency_p95_ms",
                     "tokens_per_query", "cost_per_1k_queries"}


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pipeline")


def overrides(workdir: Path, data: Path | None = None) -> list[str]:
    return [
        f"mlflow.tracking_uri=sqlite:///{workdir}/mlflow.db", f"mlflow.artifact_location={workdir}/artifacts",
        f"index.root={workdir}/index", f"finetune.output_root={workdir}/adapters",
        f"model_cache={ROOT / '.cache' / 'models'}", f"cache_root={workdir}/cache",
        f"data.path={data or ROOT / 'data' / 'demo'}",
    ]


def client_for(workdir: Path) -> MlflowClient:
    uri = f"sqlite:///{workdir}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(client: MlflowClient, experiment: str, parent_id: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def first_run(harness, workdir, monkeypatch_module):
    from flows.pipeline import retrain_flow

    return retrain_flow(config=str(ROOT / "configs" / "ci.yaml"), overrides=overrides(workdir))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(ROOT)
    yield mp
    mp.undo()


def test_pipeline_logs_stages_metrics_artifacts_and_registers_champion(first_run, workdir):
    client = client_for(workdir)
    parent = client.get_run(first_run.run_id)
    assert parent.data.tags["data_fingerprint"] == first_run.fingerprint
    children = {r.info.run_name: r for r in _runs(client, "ragtune-ci", first_run.run_id)}
    assert set(children) >= STAGE_RUNS
    for name in ("candidate-base", "candidate-finetuned", "candidate-rag", "candidate-hybrid"):
        assert set(children[name].data.metrics) >= CANDIDATE_METRICS, name
    for name in ("candidate-rag", "candidate-hybrid"):
        assert {"recall_at_k", "mrr", "context_precision", "context_recall"} <= set(children[name].data.metrics)
    assert {"eval_loss", "perplexity"} <= set(children["finetune-raft"].data.metrics)
    assert len(client.get_metric_history(children["finetune-raft"].info.run_id, "train_loss")) == 3

    top_level = {a.path for a in client.list_artifacts(first_run.run_id)}
    assert {"comparison.md", "config.yaml", "plots", "tables"} <= top_level
    assert "tables/comparison.csv" in {a.path for a in client.list_artifacts(first_run.run_id, "tables")}
    plots = {a.path for a in client.list_artifacts(first_run.run_id, "plots")}
    assert {"plots/comparison.png", "plots/latency.png"} <= plots
    assert {a.path for a in client.list_artifacts(children["validate"].info.run_id, "validation")} >= {
        "validation/report.md", "validation/result.json"}
    table = client.download_artifacts(children["candidate-hybrid"].info.run_id, "tables/per_question_hybrid.csv",
                                      str(workdir))
    header = Path(table).read_text().splitlines()[0]
    for column in ("question", "gold", "prediction", "retrieved_doc_ids", "f1"):
        assert column in header

    assert first_run.decision.promote
    champion = client.get_model_version_by_alias("ragtune-ci", "champion")
    assert champion.tags["candidate"] == first_run.decision.challenger
    assert champion.description.startswith("# Champion decision")  # the registry page says why
    assert parent.data.tags["champion"] == champion.tags["candidate"] and parent.data.tags["champion_version"] == "1"
    assert parent.data.metrics["champion_after_objective_ci_low"] <= parent.data.metrics["champion_after_objective"]
    assert champion.tags["data_fingerprint"] == first_run.fingerprint
    assert {"index_version", "base_model", "adapter_run"} <= set(champion.tags)


def test_prefect_task_runs_are_named_by_what_they_do(first_run):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        names = {run.name for run in client.read_task_runs()}
    assert {"load-data", "validate", "index", "finetune[closed_book]", "finetune[raft]", "evaluate[base]",
            "evaluate[finetuned]", "evaluate[rag]", "evaluate[hybrid]", "promote"} <= names


def test_both_uis_tell_the_story(first_run, workdir):
    """The MLflow parent run carries every candidate's headline metrics and the decision as its description;
    the Prefect flow run carries the comparison and the decision as artifacts that link to MLflow."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    parent = client_for(workdir).get_run(first_run.run_id)
    for candidate in ("base", "finetuned", "rag", "hybrid"):
        assert {f"{candidate}.exact_match", f"{candidate}.f1", f"{candidate}.latency_p95_ms"} <= set(
            parent.data.metrics)
    assert parent.data.tags["mlflow.note.content"].startswith("# Champion decision")
    assert parent.data.metrics["challenger_objective"] == pytest.approx(first_run.decision.challenger_score)
    logged = {a.path for folder in ("tables", "plots") for a in client_for(workdir).list_artifacts(parent.info.run_id,
                                                                                                   folder)}
    assert {"tables/decision_history.csv", "plots/decision_history.png"} <= logged
    experiment = client_for(workdir).get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["comparison", "champion-decision"])))}
    assert first_run.run_id in artifacts["comparison"].data and "| hybrid" in artifacts["comparison"].data
    assert "# Champion decision" in artifacts["champion-decision"].data


def test_registered_champion_answers_a_question(first_run, workdir):
    import mlflow

    mlflow.set_registry_uri(f"sqlite:///{workdir}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/ragtune-ci@champion")
    out = model.predict({"question": "How many people did Brightwater Instruments employ as of January 2026?"})
    assert list(out.columns) == ["answer", "sources", "latency_ms"]
    assert isinstance(out.iloc[0]["answer"], str)
    assert isinstance(json.loads(out.iloc[0]["sources"]), list)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}: {server.stdout.read()}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


def test_champion_served_by_mlflow_answers_over_http(first_run, workdir):
    """`mlflow models serve -m models:/<name>@champion` on 127.0.0.1, as the README shows."""
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # mlflow starts uvicorn
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/ragtune-ci@champion", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{port}/ping", server, timeout_s=300)
        question = "How many people did Brightwater Instruments employ as of January 2026?"
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=120,
                              json={"dataframe_records": [{"question": question}]})
        assert reply.status_code == 200, reply.text
        (prediction,) = reply.json()["predictions"]
        assert set(prediction) == {"answer", "sources", "latency_ms"}
        assert prediction["answer"].strip() and prediction["latency_ms"] > 0
        champion = client_for(workdir).get_model_version_by_alias("ragtune-ci", "champion")
        sources = json.loads(prediction["sources"])
        assert bool(sources) == (champion.tags["index_version"] != "none")
        assert requests.post(f"http://127.0.0.1:{port}/invocations", timeout=30,
                             json={"dataframe_records": [{"prompt": question}]}).status_code == 400
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_second_run_within_margin_keeps_champion(first_run, workdir):
    from flows.pipeline import retrain_flow

    client = client_for(workdir)
    before = client.get_model_version_by_alias("ragtune-ci", "champion").version
    versions = len(client.search_model_versions("name = 'ragtune-ci'"))
    second = retrain_flow(config=str(ROOT / "configs" / "ci.yaml"), overrides=overrides(workdir))
    assert not second.decision.promote
    assert any("champion stays" in r for r in second.decision.reasons)
    assert client.get_model_version_by_alias("ragtune-ci", "champion").version == before
    # Nothing changed, so the challenger is the very system already registered: no new version.
    assert client.get_model_version_by_alias("ragtune-ci", "challenger").version == before
    assert len(client.search_model_versions("name = 'ragtune-ci'")) == versions
    assert all(stage.reused for stage in second.stages) and second.what_changed.startswith("nothing changed")
    assert client.get_run(second.run_id).data.tags["what_changed"] == second.what_changed
    promote_run = next(r for r in _runs(client, "ragtune-ci", second.run_id) if r.info.run_name == "promote")
    assert promote_run.data.tags["registration"] == "reused an identical version"
    decision_md = Path(client.download_artifacts(promote_run.info.run_id, "decision.md", str(workdir))).read_text()
    assert "keep the current champion" in decision_md
    # The champion's stored per-question scores feed the paired test: same adapter, same questions, no gain.
    assert second.decision.significance is not None and not second.decision.significance.significant
    assert "not tested" not in decision_md


def _edit_jsonl(path: Path, match: dict, **changes) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    row = next(r for r in rows if all(r[k] == v for k, v in match.items()))
    row.update({k: f(row[k]) for k, f in changes.items()})
    write_jsonl(path, rows)


def _recomputed(result) -> set[str]:
    return {stage.stage for stage in result.stages if not stage.reused}


def test_an_edit_recomputes_exactly_the_stages_that_read_it(first_run, workdir, tmp_path):
    """Index, adapters and evaluations are shared with the first run (content-keyed); the MLflow store is not."""
    from flows.pipeline import retrain_flow
    from tasks.data_loading import load_dataset
    from tasks.settings import load_config

    data = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "demo", data)
    own = [*overrides(workdir, data), f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
           f"mlflow.artifact_location={tmp_path}/artifacts"]
    config = str(ROOT / "configs" / "ci.yaml")
    same = retrain_flow(config=config, overrides=own)
    assert _recomputed(same) == {"validate"}  # the same content from another path: only its messages differ

    cfg = load_config(config, own)
    dataset = load_dataset(cfg.data)
    evaluated_docs = set(dataset.split("test", cfg.data.max_questions_per_split["test"])["doc_id"])
    doc_id = next(d for d in dataset.documents["doc_id"] if d not in evaluated_docs)
    _edit_jsonl(data / "documents.jsonl", {"doc_id": doc_id}, text=lambda t: t + " Reviewed in November 2026.")
    edited_doc = retrain_flow(config=config, overrides=own)
    assert _recomputed(edited_doc) == {"validate", "index", "finetune[raft]", "evaluate[rag]", "evaluate[hybrid]"}
    index_stage = next(s for s in edited_doc.stages if s.stage == "index")
    assert index_stage.detail.endswith("removed") and edited_doc.index.embedded < edited_doc.index.num_chunks // 10

    train_id = dataset.split("train")["qa_id"].iloc[0]
    _edit_jsonl(data / "qa.jsonl", {"qa_id": train_id}, question=lambda q: q.rstrip("?") + ", exactly?")
    edited_question = retrain_flow(config=config, overrides=own)
    assert _recomputed(edited_question) == {"validate", "finetune[closed_book]", "finetune[raft]",
                                            "evaluate[finetuned]", "evaluate[hybrid]"}


def _random_adapter(base_model_dir: str, out: Path) -> str:
    """A LoRA adapter of random weights on every linear layer: a deliberately broken finetune."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=1.0)
    model.save_pretrained(out)
    return str(out)


def test_random_adapter_challenger_is_registered_but_not_promoted(first_run, workdir):
    """The real evaluate and promote stages against the registered champion, with a broken challenger."""
    import mlflow

    from flows import stages
    from flows.context import RunContext
    from flows.pipeline import prepare
    from tasks import answer_types
    from tasks.finetuning import FinetuneResult, TrainedAdapter
    from tasks.indexing import build_index

    client = client_for(workdir)
    champion = client.get_model_version_by_alias("ragtune-ci", "champion")
    champion_f1 = client.get_run(champion.tags["candidate_run_id"]).data.metrics["f1"]
    assert champion_f1 > 0  # otherwise a broken challenger could not score below it

    cfg = prepare(str(ROOT / "configs" / "ci.yaml"), overrides(workdir), None)
    dataset = stages.load_data(cfg)
    cfg, _ = answer_types.resolve(cfg, dataset.qa, dataset.documents, lambda texts: [])  # span: nothing to size
    index = build_index(dataset.documents, dataset.fingerprint, cfg.index)
    with mlflow.start_run(run_name="random-adapter-challenger") as parent:
        ctx = RunContext(cfg, dataset, parent.info.run_id)
        adapter_dir = _random_adapter(ctx.base_model_dir, workdir / "random-adapter")
        adapter = TrainedAdapter(FinetuneResult("raft", adapter_dir, train_examples=0, steps=0), run_id="none")
        broken = stages.evaluate_candidate(ctx, "hybrid", adapter, index)
        decision = stages.promote(ctx, [broken]).decision

    assert broken.report.metrics["f1"] < champion_f1
    assert decision.challenger == "hybrid" and not decision.promote
    assert decision.champion_score > decision.challenger_score
    assert client.get_model_version_by_alias("ragtune-ci", "champion").version == champion.version
    challenger = client.get_model_version_by_alias("ragtune-ci", "challenger")
    assert int(challenger.version) > int(champion.version) and challenger.tags["candidate"] == "hybrid"


def test_broken_data_stops_at_validation(harness, monkeypatch_module, tmp_path):
    from flows.pipeline import retrain_flow
    from tasks.validation import DataValidationError

    data = tmp_path / "broken"
    shutil.copytree(ROOT / "data" / "demo", data)
    qa = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    qa[0]["answer"] = ["an answer that is in no document"]
    write_jsonl(data / "qa.jsonl", qa)
    workdir = tmp_path / "work"
    with pytest.raises(DataValidationError, match=qa[0]["qa_id"]):
        retrain_flow(config=str(ROOT / "configs" / "ci.yaml"), overrides=overrides(workdir, data))
    client = client_for(workdir)
    exp = client.get_experiment_by_name("ragtune-ci")
    names = {r.info.run_name for r in client.search_runs([exp.experiment_id])}
    assert "validate" in names
    assert not names & {"index", "finetune-closed_book", "finetune-raft", "promote"}
    assert not (workdir / "adapters").exists() and not (workdir / "index").exists()
    assert client.search_model_versions("name = 'ragtune-ci'") == []


def test_champion_from_other_test_set_is_rescored(first_run, workdir):
    """A different evaluation set makes stored scores incomparable: the served champion is re-scored."""
    from flows.pipeline import retrain_flow

    client = client_for(workdir)
    champion = client.get_model_version_by_alias("ragtune-ci", "champion")
    third = retrain_flow(config=str(ROOT / "configs" / "ci.yaml"),
                         overrides=[*overrides(workdir), "data.max_questions_per_split.test=5"])
    promote_run = next(r for r in _runs(client, "ragtune-ci", third.run_id) if r.info.run_name == "promote")
    assert promote_run.data.tags["champion_scored_on"] == "re-scored on this evaluation set"
    # Same adapter, index and questions with greedy decoding: the re-score equals this run's own score.
    same_candidate = next(r for r in third.comparison if r["candidate"] == champion.tags["candidate"])
    assert third.decision.champion_score == pytest.approx(same_candidate["f1"], abs=1e-9)


def _resplit_half_test(source: Path, out: Path) -> Path:
    """data/demo_labels with its own 50% test split and no validation split, as some public label sets come."""
    import hashlib

    out.mkdir(parents=True)
    shutil.copy(source / "documents.jsonl", out / "documents.jsonl")
    rows = [json.loads(line) for line in (source / "qa.jsonl").read_text().splitlines()]
    for row in rows:
        row["split"] = "test" if int(hashlib.sha256(row["qa_id"].encode()).hexdigest(), 16) % 2 else "train"
    write_jsonl(out / "qa.jsonl", rows)
    return out


def _long_answer_squad(out: Path) -> Path:
    """A SQuAD-format file whose answers are whole sentences copied from the paragraph (long extractive answers)."""
    docs = {d["doc_id"]: d for d in map(json.loads, (ROOT / "data" / "demo" / "documents.jsonl").read_text()
                                        .splitlines())}
    qa = [json.loads(line) for line in (ROOT / "data" / "demo_free_form" / "qa.jsonl").read_text().splitlines()]
    articles: dict[str, dict] = {}
    for row in qa:
        text = docs[row["doc_id"]]["text"]
        sentences = [s.strip() for s in text.replace("\n", " ").split(". ") if len(s.split()) > 8]
        words = set(row["answer"][0].lower().split())
        best = max(sentences, key=lambda s: len(words & set(s.lower().split())))
        para = articles.setdefault(row["doc_id"], {"context": text, "qas": []})
        para["qas"].append({"id": row["qa_id"], "question": row["question"],
                            "answers": [{"text": best, "answer_start": text.find(best)}]})
    payload = {"data": [{"title": docs[d]["title"], "paragraphs": [p]} for d, p in articles.items()]}
    out.write_text(json.dumps(payload))
    return out


def _inspect_then_run(tmp_path: Path, data: Path, template: str):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.pipeline import retrain_flow

    config = tmp_path / "starter.yaml"
    inspected = CliRunner().invoke(app, ["inspect", "--data", str(data), "--config", template, "--out", str(config)])
    assert inspected.exit_code == 0, inspected.output
    workdir = tmp_path / "work"
    return inspected.output, retrain_flow(config=str(config), overrides=overrides(workdir, data)), workdir


def test_label_data_with_its_own_half_test_split_runs_from_inspect(harness, monkeypatch_module, tmp_path):
    data = _resplit_half_test(ROOT / "data" / "demo_labels", tmp_path / "labels")
    output, result, workdir = _inspect_then_run(tmp_path, data, "configs/ci.yaml")
    assert "answer type label (inferred)" in output and "validation.split_bounds.test widened" in output
    assert result.answer_type == "label" and result.decision is not None
    row = next(r for r in result.comparison if r["candidate"] == "hybrid")
    assert {"accuracy", "macro_f1", "accuracy_ci", "macro_f1_ci"} <= set(row) and "exact_match" not in row
    client = client_for(workdir)
    exp = client.get_experiment_by_name("ragtune-labels")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    hybrid = runs["candidate-hybrid"]
    assert hybrid.data.tags["answer_type"] == "label" and "macro_f1_ci_low" in hybrid.data.metrics
    assert {"tables/confusion_hybrid.csv"} <= {a.path for a in client.list_artifacts(hybrid.info.run_id, "tables")}
    predictions = pd.read_csv(client.download_artifacts(hybrid.info.run_id, "tables/per_question_hybrid.csv",
                                                        str(tmp_path)))["prediction"]
    assert set(predictions) <= {"yes", "no", "maybe"}


def test_long_answer_squad_file_runs_as_free_form_from_inspect(harness, monkeypatch_module, tmp_path):
    data = _long_answer_squad(tmp_path / "long_answers.json")
    output, result, workdir = _inspect_then_run(tmp_path, data, "configs/ci_free_form.yaml")
    assert "answer type free_form (inferred)" in output
    assert result.answer_type == "free_form"
    row = next(r for r in result.comparison if r["candidate"] == "hybrid")
    assert {"rouge", "f1", "rouge_ci", "semantic_similarity"} <= set(row)
    client = client_for(workdir)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["answer_type"] == "free_form"
    why = Path(client.download_artifacts(result.run_id, "answer_type.md", str(tmp_path))).read_text()
    assert "**free_form** (declared)" in why and "- verbatim in the gold document: 100.0%" in why  # as inspect wrote
    import yaml

    resolved = yaml.safe_load(Path(client.download_artifacts(result.run_id, "config.yaml", str(tmp_path))).read_text())
    assert resolved["generation"]["max_new_tokens"] == 48  # sized from the training answers, capped by the CI config
    assert resolved["champion"]["objective"] == {"rouge": 0.5, "semantic_similarity": 0.5}
