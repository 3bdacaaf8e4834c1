"""Candidate studies of `ragtune tune`: per-mode finetune settings, held-out loss every N steps, pruning and the
budget, and a real study (SmolLM2, the demo data, Optuna storage) whose written config reproduces its best trial."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import optuna
import pytest

from tasks import candidate_tuning, finetuning, tuning, tuning_report
from tasks.candidates import get
from tasks.config_base import ConfigError
from tasks.data_loading import load_dataset
from tasks.models import resolve_model_dir
from tasks.settings import FinetuneConfig, GenerationConfig, load_config
from tasks.training import Runtime, TrainState
from tests.conftest import ROOT
from tests.test_finetuning import QA6

CPU = Runtime("cpu", "float32", 2)


def test_by_mode_settings_apply_to_their_adapter_only_and_name_the_key_when_wrong(tmp_path):
    cfg = FinetuneConfig(learning_rate=2e-4, by_mode={"raft": {"learning_rate": 6e-4, "lora": {"r": 32}}})
    raft, closed = cfg.for_mode("raft"), cfg.for_mode("closed_book")
    assert (raft.learning_rate, raft.lora.r, raft.lora.alpha) == (6e-4, 32, cfg.lora.alpha)  # alpha kept: merged
    assert closed == cfg
    gen = GenerationConfig()
    key = finetuning.adapter_key
    assert key("closed_book", "m", "fp", None, closed, gen, 1, CPU) == \
        key("closed_book", "m", "fp", None, FinetuneConfig(learning_rate=2e-4), gen, 1, CPU)
    assert key("raft", "m", "fp", {}, raft, gen, 1, CPU) != key("raft", "m", "fp", {}, closed, gen, 1, CPU)
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "ci.yaml").read_text())
    with pytest.raises(ConfigError, match=r"finetune\.by_mode\.raft\.lora\.r"):
        load_config(bad, ["finetune.by_mode.raft.lora.r=0"])


def test_held_out_loss_is_measured_every_n_steps(tiny_model_dir, tmp_path):
    cfg = FinetuneConfig(output_root=tmp_path, batch_size=2, epochs=2, eval_every_steps=2, warmup_ratio=0.0,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    result = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA6.head(2), "fp", cfg, GenerationConfig(),
                                 seed=3, progress=False)
    assert result.eval_steps == [2, 3, 4, 6]  # every 2 steps and at each epoch's end (3 steps per epoch)
    assert result.eval_loss == min(result.eval_losses)


def _reported_trial(study, losses: dict[int, float]) -> optuna.Trial:
    trial = study.ask()
    for step, loss in losses.items():
        trial.report(-loss, step)
    return trial


def test_a_trial_worse_than_the_median_or_over_budget_is_stopped_but_never_the_baseline():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    first = _reported_trial(study, {2: 1.0})
    study.tell(first, 0.5)
    state = TrainState(step=2, eval_steps=[2], eval_losses=[3.0])
    later = study.ask()
    with pytest.raises(optuna.TrialPruned):
        candidate_tuning._pruning_hook(later, baseline=False, deadline=math.inf)(state)
    assert "worse than the median" in later.user_attrs["stopped"]
    candidate_tuning._pruning_hook(study.ask(), baseline=True, deadline=math.inf)(state)  # the baseline finishes
    better = TrainState(step=2, eval_steps=[2], eval_losses=[0.5])
    candidate_tuning._pruning_hook(study.ask(), baseline=False, deadline=math.inf)(better)
    late = study.ask()
    with pytest.raises(optuna.TrialPruned):
        candidate_tuning._pruning_hook(late, baseline=False, deadline=time.monotonic() - 1)(TrainState(step=1))
    assert "budget" in late.user_attrs["stopped"]
    candidate_tuning._pruning_hook(study.ask(), baseline=True, deadline=time.monotonic() - 1)(TrainState(step=1))


def test_trial_settings_reach_their_adapter_mode_and_the_baseline_keeps_the_configs_own(tmp_path):
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"cache_root={tmp_path}"])
    params = {"learning_rate": 5e-4, "lora_r": 8, "lora_alpha_ratio": 2.0, "epochs": 2, "train_examples": 40,
              "gold_probability": 0.6}
    tuned = tuning.configured(cfg, candidate_tuning.finetune_overrides("raft", params, 5))
    raft = tuned.finetune.for_mode("raft")
    assert (raft.learning_rate, raft.lora.r, raft.lora.alpha, raft.epochs, raft.max_steps) == (5e-4, 8, 16, 2, None)
    assert (raft.raft.max_train_examples, raft.raft.gold_probability, raft.eval_every_steps) == (40, 0.6, 5)
    assert tuned.finetune.for_mode("closed_book").model_dump(exclude={"by_mode"}) == cfg.finetune.model_dump(
        exclude={"by_mode"})
    own = tuning.configured(cfg, candidate_tuning.finetune_overrides("closed_book", None, 5)).finetune
    assert own.for_mode("closed_book") == cfg.finetune.model_copy(update={"eval_every_steps": 5})


def _study_config(tmp_path: Path, trials: int):
    overrides = [f"cache_root={tmp_path}/cache", f"index.root={tmp_path}/index",
                 f"finetune.output_root={tmp_path}/adapters", f"model_cache={ROOT / '.cache' / 'models'}",
                 f"data.path={ROOT / 'data' / 'demo'}", f"tune.storage=sqlite:///{tmp_path}/optuna.db",
                 f"tune.max_trials={trials}", "tune.heartbeat_s=1", "data.answer_type=span",
                 "data.max_questions_per_split={test: 8, validation: 8}", "tune.finetune.epochs={low: 1, high: 1}",
                 "tune.finetune.train_examples={low: 8, high: 16, step: 8}", "tune.finetune.eval_every_steps=2"]
    return load_config(ROOT / "configs" / "ci.yaml", overrides), overrides


@pytest.mark.integration
def test_a_candidate_study_reads_no_test_question_and_its_config_reproduces_the_best_trial(tmp_path):
    cfg, overrides = _study_config(tmp_path, trials=2)
    dataset = load_dataset(cfg.data)
    data = tuning.tuning_data(dataset, cfg)
    base = resolve_model_dir(cfg.base_model, cfg.model_cache)
    with pytest.raises(tuning.TestSplitRead):
        everything = tuning.TuningData(dataset.documents, dataset.qa, dataset.split("train"))
        candidate_tuning.score_candidate(get("finetuned"), cfg, everything, base, None)

    study = candidate_tuning.run_candidate_study(cfg, data, "finetuned", base)
    trials = tuning.outcomes(study)
    assert len(trials) == 2 and trials[0].baseline and trials[0].params["max_steps"] == cfg.finetune.max_steps
    best = tuning_report.best_outcome(trials)
    summary = tuning_report.StudySummary("finetuned", study.study_name, "objective", trials, best, trials[0],
                                         tuning.spent(study)[1], "space")
    out = tuning_report.write_tuned_config(ROOT / "configs" / "ci.yaml", overrides[:5], [summary],
                                           tmp_path / "tuned.yaml")
    assert "finetuned: " in out.read_text().splitlines()[1]
    tuned = load_config(out, ["data.answer_type=span", "data.max_questions_per_split={test: 8, validation: 8}"])
    metrics, result = candidate_tuning.score_candidate(get("finetuned"), tuned, data, base, None)
    assert result.reused and metrics["objective"] == best.value  # `ragtune run` finds the best trial's adapter
    shutil.rmtree(result.adapter_dir)
    metrics, result = candidate_tuning.score_candidate(get("finetuned"), tuned, data, base, None)
    assert not result.reused and metrics["objective"] == pytest.approx(best.value, abs=1e-9)  # and retrains to it


def test_studies_sent_to_other_machines_need_a_storage_they_reach(tmp_path):
    from tasks.errors import UserError

    remote = ["scale.dask.enabled=true", "scale.dask.address=tcp://10.0.0.5:8786", f"cache_root={tmp_path}"]
    cfg = load_config(ROOT / "configs" / "ci.yaml", remote)
    with pytest.raises(UserError, match=r"tune\.storage .*scale\.dask\.address"):
        tuning.check_shared_storage(cfg)
    tuning.check_shared_storage(load_config(ROOT / "configs" / "ci.yaml", [*remote, "tune.storage=postgresql://h/o"]))
    tuning.check_shared_storage(load_config(ROOT / "configs" / "ci.yaml", [f"cache_root={tmp_path}"]))


@pytest.mark.integration
def test_candidate_studies_fanned_out_to_dask_workers_log_into_the_tune_run(tmp_path):
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    from flows.tune import tune_flow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, overrides = _study_config(tmp_path, trials=1)
    overrides += [f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/art",
                  "tune.candidates=[finetuned, hybrid]", "scale.dask.enabled=true", "scale.dask.workers=2"]
    with prefect_test_harness(server_startup_timeout=120):
        result = tune_flow(config=str(ROOT / "configs" / "ci.yaml"), overrides=overrides, out=str(tmp_path / "t.yaml"))
    assert [(s.kind, len(s.trials)) for s in result.studies] == [("retrieval", 1), ("finetuned", 1), ("hybrid", 1)]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = client.get_run(result.run_id)
    assert {"finetuned.best_value", "hybrid.best_value"} <= set(parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert {"finetuned-trial-0", "hybrid-trial-0"} <= {r.info.run_name for r in children}
    assert len(client.search_runs([parent.info.experiment_id])) == 1 + len(children)  # no stray top-level run
    tuned = load_config(tmp_path / "t.yaml")
    assert set(tuned.finetune.by_mode) == {"closed_book", "raft"}
