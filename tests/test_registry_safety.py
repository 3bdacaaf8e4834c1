"""The model registry is data, not code: ragtune loads a version only through tasks.registry, which refuses a
pickled python_model and a version without lineage tags; registration never leaves an untagged version behind;
promotion is a compare-and-set, so two concurrent promotions leave the better challenger as champion.
Real MLflow sqlite stores under tmp_path, a 2-layer model, no training."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
from pathlib import Path

import cloudpickle
import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tasks.candidates import CandidateBundle
from tasks.champion import Decision, decide
from tasks.data_loading import load_dataset
from tasks.errors import RegistryError
from tasks.evaluation import CandidateOutcome, CandidateReport
from tasks.indexing import build_index
from tasks.promotion import SERVING_CODE, Baseline, apply_promotion, decide_promotion, log_and_register
from tasks.records import RunRecord
from tasks.registry import LINEAGE_TAGS, load_version, missing_lineage
from tasks.settings import PipelineConfig, load_config
from tasks.tracking import log_record, setup_tracking
from tests.conftest import ROOT

MODEL = "ragtune-safety"
TEST_SET = "qa1234:5:docs"
QUESTIONS = [f"q{i}" for i in range(5)]
START_F1 = 0.5


def _overrides(tmp: Path, base_model: str) -> list[str]:
    return [f"base_model={{path: '{base_model}'}}", f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            f"mlflow.artifact_location={tmp}/artifacts", f"cache_root={tmp}/cache", f"champion.model_name={MODEL}",
            "generation.max_new_tokens=3", f"data.path={ROOT / 'data' / 'demo'}"]


def _config(tmp: Path, base_model: str) -> PipelineConfig:
    cfg = load_config(ROOT / "configs" / "ci.yaml", _overrides(tmp, base_model))
    setup_tracking(cfg.mlflow)
    return cfg


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables created (a few seconds), copied by each test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def cfg(tmp_path, tiny_model_dir, empty_store):
    previous = mlflow.get_tracking_uri()
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    yield _config(tmp_path, tiny_model_dir)
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


def _report(name: str, f1: float) -> CandidateReport:
    return CandidateReport(name, {"f1": f1, "latency_p95_ms": 100.0},
                           pd.DataFrame({"qa_id": QUESTIONS, "f1": [f1] * len(QUESTIONS)}))


def _outcome(name: str, f1: float, test_set: str = TEST_SET) -> CandidateOutcome:
    """A candidate as a run evaluated it: its run holds the metrics and per-question scores, like the pipeline's."""
    report = _report(name, f1)
    with mlflow.start_run(run_name=f"candidate-{name}") as run:
        log_record(RunRecord(metrics=report.metrics, tables={f"per_question_{name}.csv": report.per_question}))
    lineage = {"data_fingerprint": "data1", "base_model": "tiny", "index_version": "none", "adapter_run": "none",
               "candidate_run_id": run.info.run_id, "test_set": test_set}
    return CandidateOutcome(report, run.info.run_id, CandidateBundle(name, None, None, lineage))


def _starting_champion() -> CandidateOutcome:
    """The champion both concurrent runs read (version 1), as they read it: its stored scores."""
    return CandidateOutcome(_report("base", START_F1), "", CandidateBundle("base", None, None, {}))


def _decide(cfg: PipelineConfig, mine: CandidateOutcome, champion: CandidateOutcome) -> Decision:
    """The policy's decision (with its paired test) on `mine` against the champion a run read."""
    name = mine.report.name
    return decide({name: mine.report.metrics}, cfg.champion, champion.report.metrics,
                  per_question={name: mine.report.per_question}, champion_per_question=champion.report.per_question,
                  seed=cfg.seed)


def _register_champion(cfg: PipelineConfig) -> CandidateOutcome:
    start = _outcome("base", START_F1)
    with mlflow.start_run(run_name="register-champion"):
        log_and_register(start.bundle, cfg, promote=True)
    return start


def _log_code_model(cfg: PipelineConfig, tmp: Path) -> str:
    """A models-from-code version's URI with ragtune's artifacts, logged but not registered."""
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    (tmp / "candidate.json").write_text('{"name": "base"}')
    with mlflow.start_run(run_name="by-hand"):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(SERVING_CODE), pip_requirements=["mlflow"],
                                       artifacts={"config": str(tmp / "config.yaml"),
                                                  "candidate": str(tmp / "candidate.json")})
    return info.model_uri


def test_a_registered_version_is_code_not_a_pickle_and_loads_with_the_installed_code(cfg, tmp_path):
    docs = pd.DataFrame({"doc_id": ["d1", "d2"], "title": ["T4", "Office"],
                         "text": ["The TideWatch T4 buoy weighs 212 kg.", "The Kellsport office opens at 8 am."]})
    cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"root": tmp_path / "index", "top_k": 1})})
    index = build_index(docs, "docs1", cfg.index)
    rag = _outcome("rag", START_F1)
    with mlflow.start_run(run_name="register-rag"):
        log_and_register(CandidateBundle("rag", None, str(index.path), rag.bundle.lineage), cfg, promote=True)
    version = MlflowClient().get_model_version_by_alias(MODEL, "champion")
    assert set(LINEAGE_TAGS) | {"test_set", "candidate_run_id", "data_fingerprint"} <= set(version.tags)
    mlmodel = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"{MlflowClient().get_model_version_download_uri(MODEL, version.version)}/MLmodel")).read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert "python_model" not in flavor and flavor["model_code_path"].endswith("serving_model.py")
    assert flavor["code"] is None  # no copy of the tasks/ package travels with the model

    loaded = load_version(MODEL, alias="champion")
    assert loaded.candidate == "rag" and loaded.version.version == version.version
    (answer,) = loaded.answerer.answer(["When does the Kellsport office open?"])
    assert isinstance(answer.text, str) and answer.sources == ["d2"]  # retrieved from the registered index
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict({"question": "How heavy is the T4?"})
    assert list(served.columns) == ["answer", "sources", "latency_ms"]  # `mlflow models serve` still works
    assert served.at[0, "sources"] == '["d1"]'


class _Payload(mlflow.pyfunc.PythonModel):
    """A model whose unpickling writes `marker`: what a hostile version registered as champion would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)

    def predict(self, context, model_input, params=None):
        return model_input


def _hostile_champion(marker: Path, **tags: str):
    """A version someone with write access registered as champion: a pickle, with forged lineage tags."""
    with mlflow.start_run(run_name="hostile"):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Payload(marker), pip_requirements=["mlflow"])
    hostile = mlflow.register_model(info.model_uri, MODEL, tags={**{t: "forged" for t in LINEAGE_TAGS}, **tags})
    MlflowClient().set_registered_model_alias(MODEL, "champion", hostile.version)
    return hostile


def test_a_pickled_champion_is_refused_without_running_its_payload(cfg, tmp_path):
    marker = tmp_path / "payload-ran"
    hostile = _hostile_champion(marker)

    with pytest.raises(RegistryError, match=f"model {MODEL} version {hostile.version} holds a pickled python_model"):
        load_version(MODEL, alias="champion")
    assert not marker.exists()

    root = MlflowClient().get_model_version_download_uri(MODEL, hostile.version)
    pickled = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/python_model.pkl")
    with open(pickled, "rb") as fh:
        cloudpickle.load(fh)  # the control: the payload is live, so only the refusal kept it from running
    assert marker.read_text() == "payload ran"


def test_the_retrain_does_not_rescore_a_pickled_champion_and_promotes_nothing(cfg, tmp_path):
    marker = tmp_path / "payload-ran"
    hostile = _hostile_champion(marker, test_set="an-older-set")  # another evaluation set: it would be re-scored
    mine = _outcome("hybrid", 0.7)
    decision, baseline = decide_promotion([mine], load_dataset(cfg.data), cfg)
    assert not decision.promote and baseline.version == str(hostile.version)
    assert "holds a pickled python_model" in decision.reasons[-1] and "Nothing is promoted" in decision.reasons[-1]
    with mlflow.start_run(run_name="promote"):
        promotion = apply_promotion(decision, baseline, [mine], cfg)
    assert not marker.exists()
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion").version == hostile.version
    assert MlflowClient().get_model_version_by_alias(MODEL, "challenger").version == promotion.version.version


def test_a_version_without_lineage_tags_is_refused_and_named(cfg, tmp_path):
    untagged = mlflow.register_model(_log_code_model(cfg, tmp_path), MODEL)
    MlflowClient().set_registered_model_alias(MODEL, "challenger", untagged.version)
    with pytest.raises(RegistryError) as err:
        load_version(MODEL, alias="challenger")
    assert str(err.value).startswith(f"model {MODEL} version {untagged.version} lacks ragtune's lineage tags "
                                     "candidate, bundle_key:")


def test_the_next_promotion_removes_an_interrupted_registration(cfg, tmp_path, caplog):
    start = _register_champion(cfg)  # version 1, tagged, champion
    cut_off = mlflow.register_model(_log_code_model(cfg, tmp_path), MODEL)  # killed before tagging: no alias
    aliased = mlflow.register_model(_log_code_model(cfg, tmp_path), MODEL)  # untagged, but an alias points at it
    MlflowClient().set_registered_model_alias(MODEL, "canary", aliased.version)
    worse = _outcome("rag", START_F1 - 0.1)
    decision = _decide(cfg, worse, start)
    with caplog.at_level(logging.INFO, logger="ragtune.registry"), mlflow.start_run(run_name="promote"):
        promotion = apply_promotion(decision, Baseline("1", start.report.metrics, start.report.per_question,
                                                       "stored metrics (same evaluation set)"), [worse], cfg)
    versions = {v.version for v in MlflowClient().search_model_versions(f"name = '{MODEL}'")}
    assert cut_off.version not in versions and {1, aliased.version, promotion.version.version} <= versions
    assert f"removed model {MODEL} version {cut_off.version}" in caplog.text
    assert "lacks the lineage tags candidate, bundle_key" in caplog.text
    untagged = {v.version for v in MlflowClient().search_model_versions(f"name = '{MODEL}'") if missing_lineage(v)}
    assert untagged == {aliased.version}  # an alias keeps a version, whatever its tags


def test_a_champion_from_another_evaluation_set_cannot_be_overwritten_by_a_stale_decision(cfg):
    start = _register_champion(cfg)
    other = _outcome("rag", 0.9, test_set="another-set")
    with mlflow.start_run(run_name="other-run"):
        log_and_register(other.bundle, cfg, promote=True)  # another run moved the champion meanwhile
    mine = _outcome("hybrid", 0.7)
    decision = _decide(cfg, mine, start)
    assert decision.promote, decision.reasons
    with mlflow.start_run(run_name="promote"):
        promotion = apply_promotion(decision, Baseline("1", start.report.metrics, start.report.per_question,
                                                       "stored metrics (same evaluation set)"), [mine], cfg)
    assert not promotion.decision.promote
    assert "has no recorded objective on this evaluation set" in promotion.decision.reasons[-1]
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion").tags["candidate"] == "rag"


def _promote_in_process(tmp: str, base_model: str, name: str, f1: float, delay_s: float, barrier, results) -> None:
    """One run's promote stage: decided against the starting champion, applied after `delay_s`."""
    cfg = _config(Path(tmp), base_model)
    mine, start = _outcome(name, f1), _starting_champion()
    decision = _decide(cfg, mine, start)
    barrier.wait()
    time.sleep(delay_s)
    with mlflow.start_run(run_name=f"promote-{name}"):
        promotion = apply_promotion(decision, Baseline("1", start.report.metrics, start.report.per_question,
                                                       "stored metrics (same evaluation set)"), [mine], cfg)
    results.put((name, decision.promote, promotion.decision.promote, time.time(), promotion.decision.reasons))


@pytest.mark.parametrize("first", ["better", "worse"])
def test_two_concurrent_promotions_leave_the_better_challenger_as_champion(cfg, tmp_path, tiny_model_dir, first):
    _register_champion(cfg)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    runs = {"better": ("hybrid", 0.7), "worse": ("rag", 0.6)}
    processes = [spawn.Process(target=_promote_in_process, args=(str(tmp_path), tiny_model_dir, name, f1,
                                                                  0.0 if who == first else 1.0, barrier, results))
                 for who, (name, f1) in runs.items()]
    for process in processes:
        process.start()
    finished = sorted((results.get(timeout=120) for _ in processes), key=lambda r: r[3])
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert all(decided for _, decided, _, _, _ in finished)  # both beat the champion they read
    last_name, _, last_promoted, _, last_reasons = finished[-1]
    assert last_name == runs["better" if first == "worse" else "worse"][0]  # the order the test asked for
    assert last_promoted == (first == "worse")
    assert any("the champion moved from version 1" in r for r in last_reasons)
    assert MlflowClient().get_model_version_by_alias(MODEL, "champion").tags["candidate"] == "hybrid"


def test_ask_before_any_champion_says_to_run_first(cfg, tmp_path):
    from typer.testing import CliRunner

    import flows.pipeline  # noqa: F401 - Prefect binds its log handlers at first import: not inside the runner
    from flows.cli import app

    expected = f"model {MODEL} has no version with alias 'champion': run `ragtune run` first"
    with pytest.raises(RegistryError) as err:
        load_version(MODEL, alias="champion")
    assert str(err.value) == expected
    config = tmp_path / "ask.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    raw["champion"]["model_name"] = MODEL
    raw["mlflow"] = {**raw["mlflow"], "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                     "artifact_location": str(tmp_path / "artifacts")}
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["ask", "Where is Kellsport?", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output
