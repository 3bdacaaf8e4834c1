"""`ragtune tune`'s retrieval study: real Optuna storage, real FAISS/BM25 indexes, the real embedding model,
the demo data. Resumes after a kill, never reads the test split, and its config reproduces the best trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks import tuning, tuning_report
from tasks.data_loading import Dataset, load_dataset
from tasks.retrieval import Hit
from tasks.settings import load_config
from tests.conftest import ROOT


def _overrides(tmp_path: Path, trials: int) -> list[str]:
    return [f"cache_root={tmp_path}/cache", f"index.root={tmp_path}/index", f"model_cache={ROOT / '.cache' / 'models'}",
            f"data.path={ROOT / 'data' / 'demo'}", f"tune.storage=sqlite:///{tmp_path}/optuna.db",
            f"tune.max_trials={trials}", "tune.heartbeat_s=1", "data.answer_type=span"]


def _setup(tmp_path: Path, trials: int = 4):
    cfg = load_config(ROOT / "configs" / "ci.yaml", _overrides(tmp_path, trials))
    dataset = load_dataset(cfg.data)
    return cfg, dataset


def _study_trials(cfg, data) -> list[tuning.TrialOutcome]:
    return tuning.outcomes(tuning.open_study(tuning.study_name(cfg, data), cfg))


def test_trial_settings_keep_the_passage_budget_and_the_baseline_is_the_configs_own(tmp_path):
    cfg, _ = _setup(tmp_path)
    budget = tuning.passage_budget(cfg)
    assert budget == cfg.index.top_k * cfg.index.chunking.max_tokens
    own = tuning.configured(cfg, tuning.retrieval_overrides(tuning.baseline_params(cfg), budget, True))
    assert own.index == cfg.index and own.finetune == cfg.finetune
    longer = tuning.configured(cfg, tuning.retrieval_overrides(
        {"chunking": "tokens", "max_tokens": 48, "overlap_ratio": 0.25, "mode": "lexical"}, budget, True))
    assert longer.index.top_k == budget // 48 == longer.finetune.raft.top_k
    assert longer.index.chunking.overlap_tokens == 12 and longer.index.retrieval.mode == "lexical"


def test_a_passage_is_relevant_only_from_the_gold_document_and_with_an_answer():
    hits = [Hit("a#0", "a", "Founded in 1998 in Oslo.", 1.0), Hit("g#0", "g", "The office opened.", 0.9),
            Hit("g#1", "g", "It was founded in 1998.", 0.8)]
    assert tuning.first_relevant(hits, ["1998"], "g", need_answer=True) == 3
    assert tuning.first_relevant(hits, ["1998"], "g", need_answer=False) == 2
    assert tuning.first_relevant(hits, ["199"], "g", need_answer=True) is None  # whole tokens, not substrings


def test_tuning_never_reads_the_test_split(tmp_path):
    cfg, dataset = _setup(tmp_path, trials=3)
    data = tuning.tuning_data(dataset, cfg)
    assert set(data.validation["split"]) == {"validation"}
    with pytest.raises(tuning.TestSplitRead):
        everything = tuning.TuningData(dataset.documents, dataset.qa, dataset.split("train"))
        tuning.score_retrieval(everything, cfg.index, "ndcg", True)

    tuning.run_retrieval_study(cfg, data)
    first = [(t.params, t.value) for t in _study_trials(cfg, data)]
    # The same search with every test question and answer replaced: identical study, trials and scores.
    qa = dataset.qa.copy()
    test = qa["split"] == "test"
    qa.loc[test, "question"] = "What colour is the moon?"
    qa.loc[test, "answer"] = pd.Series([["cheese"]] * int(test.sum()), index=qa.index[test])
    changed = Dataset(dataset.documents, qa, "other", dataset.source)
    other = load_config(ROOT / "configs" / "ci.yaml", [*_overrides(tmp_path / "b", 3)])
    other_data = tuning.tuning_data(changed, other)
    assert tuning.study_name(other, other_data) == tuning.study_name(cfg, data)
    tuning.run_retrieval_study(other, other_data)
    assert [(t.params, t.value) for t in _study_trials(other, other_data)] == first


def test_the_written_config_reproduces_the_best_trial(tmp_path):
    cfg, dataset = _setup(tmp_path, trials=4)
    data = tuning.tuning_data(dataset, cfg)
    trials = tuning.outcomes(tuning.run_retrieval_study(cfg, data))
    assert len(trials) == 4 and trials[0].baseline and sum(t.baseline for t in trials) == 1
    best = tuning_report.best_outcome(trials)
    assert best.value == max(t.value for t in trials)
    summary = tuning_report.StudySummary("retrieval", "s", "ndcg@k", trials, best, trials[0], 1.0, "space")
    out = tuning_report.write_tuned_config(ROOT / "configs" / "ci.yaml", _overrides(tmp_path, 4)[:4], [summary],
                                           tmp_path / "tuned.yaml")
    assert out.read_text().splitlines()[1].startswith("# retrieval: ")
    tuned = load_config(out, ["data.answer_type=span"])
    index_cfg = tuned.index.model_copy(update={"root": tmp_path / "replay"})
    assert tuning.score_retrieval(data, index_cfg, "ndcg", True)["objective"] == pytest.approx(best.value, abs=1e-9)
    raw = yaml.safe_load(out.read_text())
    assert "tune" not in raw and raw["cache_root"] == f"{tmp_path}/cache"


DRIVER = """
import sys
from tasks import tuning
from tasks.data_loading import load_dataset
from tasks.settings import load_config
cfg = load_config(sys.argv[1], sys.argv[2:])
data = tuning.tuning_data(load_dataset(cfg.data), cfg)
tuning.run_retrieval_study(cfg, data, on_trial=lambda o: print("trial", o.number, flush=True))
"""


def test_a_killed_search_resumes_where_it_stopped(tmp_path):
    cfg, dataset = _setup(tmp_path, trials=6)
    data = tuning.tuning_data(dataset, cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "configs" / "ci.yaml"),
                             *_overrides(tmp_path, 6)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("trial 2"):
                break
        os.kill(proc.pid, signal.SIGKILL)  # trial 2 is scored but not yet stored as complete
    finally:
        proc.wait(timeout=60)
    before = _study_trials(cfg, data)
    assert len(before) == 2
    time.sleep(2 * cfg.tune.heartbeat_s + 1)  # a trial killed mid-way goes stale
    study = tuning.run_retrieval_study(cfg, data)
    after = tuning.outcomes(study)
    assert len(after) == 6
    assert [(t.number, t.params, t.value) for t in after[:len(before)]] == [(t.number, t.params, t.value)
                                                                           for t in before]
    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert states[2].state.name == "FAIL"  # the killed one, failed by its stale heartbeat and retried:
    assert states[2].params in [t.params for t in after[2:]]
    assert not [t for t in states.values() if t.state.name == "RUNNING"]


def test_processes_sharing_one_study_run_one_baseline_and_stop_at_the_trial_cap(tmp_path):
    cfg, dataset = _setup(tmp_path, trials=8)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    slow_heartbeat = "tune.heartbeat_s=30"  # no trial is killed here: a busy machine must not make one look dead
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT / "configs" / "ci.yaml"),
                               *_overrides(tmp_path, 8), slow_heartbeat], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True)
             for _ in range(2)]
    ran = [proc.communicate(timeout=600)[0].split() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0] and all("trial" in out for out in ran)
    study = tuning.open_study(tuning.study_name(cfg, tuning.tuning_data(dataset, cfg)), cfg)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials].count("COMPLETE") in (8, 9)  # the other process may finish its last one
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


@pytest.mark.integration
def test_the_tune_flow_logs_each_study_its_trials_plots_and_the_tuned_config(tmp_path):
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.tune import tune_flow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [*_overrides(tmp_path, 2), f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art",
                 f"finetune.output_root={tmp_path}/adapters", "tune.candidates=[finetuned]",
                 "data.max_questions_per_split={test: 8, validation: 8}", "tune.finetune.epochs={low: 1, high: 1}",
                 "tune.finetune.train_examples={low: 8, high: 16, step: 8}", "tune.finetune.eval_every_steps=2"]
    with prefect_test_harness(server_startup_timeout=120):
        result = tune_flow(config=str(ROOT / "configs" / "ci.yaml"), overrides=overrides, out=str(tmp_path / "t.yaml"))
    assert [s.kind for s in result.studies] == ["retrieval", "finetuned"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = client.get_run(result.run_id)
    assert parent.data.tags["ragtune.flow"] == "tune"
    assert parent.data.metrics["retrieval.trials"] == parent.data.metrics["finetuned.trials"] == 2
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    trials = {r.info.run_name: r for r in children if "-trial-" in r.info.run_name}
    assert set(trials) == {"retrieval-trial-0", "retrieval-trial-1", "finetuned-trial-0", "finetuned-trial-1"}
    assert trials["retrieval-trial-0"].data.tags["baseline"] == "True"
    assert "objective" in trials["finetuned-trial-1"].data.metrics and "f1" in trials["finetuned-trial-1"].data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for folder in ("tuning", "tables") for a in client.list_artifacts(result.run_id, folder)}
    assert {"tuning/retrieval_history.png", "tuning/finetuned_history.png", "tables/trials_retrieval.csv",
            "tables/trials_finetuned.csv", "tuned_config.yaml"} <= artifacts
    assert result.config_path == tmp_path / "t.yaml"
    tuned = load_config(tmp_path / "t.yaml")
    retrieval, finetuned = result.studies
    assert tuned.index.top_k == int(retrieval.best.metrics["top_k"])
    assert tuned.finetune.for_mode("closed_book").eval_every_steps == 2  # the finetuned study's best, as measured
    assert len(finetuned.trials) == 2
    adapters = [d.name for d in (tmp_path / "adapters").iterdir() if not d.name.startswith(".")]
    assert len(adapters) == 1  # the best trial's adapter is kept for `ragtune run`, the others are deleted


def test_data_without_validation_questions_is_refused_with_the_key_that_gives_them(tmp_path):
    from tasks.errors import UserError

    cfg, dataset = _setup(tmp_path)
    no_validation = Dataset(dataset.documents, dataset.qa[dataset.qa["split"] != "validation"], "fp", dataset.source)
    with pytest.raises(UserError, match=r"data/demo.*split == 'validation'.*data\.split_fractions"):
        tuning.tuning_data(no_validation, cfg)
