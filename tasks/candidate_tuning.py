"""Candidate studies of `ragtune tune`: the adapter of each tuned candidate is searched on its own, within the
same budget as every other study.

A trial trains the candidate's adapter with its settings, written as `finetune.by_mode.<mode>.*` so that only
this candidate's adapter changes, and scores the candidate on the validation split by the champion policy's
objective: the number the final comparison ranks candidates by. The held-out loss is measured every
`tune.finetune.eval_every_steps` steps; a trial whose loss is worse than the median of earlier trials at the same
step is pruned (Optuna's MedianPruner), and one still training when the study's budget runs out is stopped. The
first trial is the config's own settings and always finishes. Trials write their adapters where the pipeline
looks for them, so `ragtune run` with the tuned config reuses the best trial's adapter.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tasks import champion
from tasks.answer_types import DEFAULTS
from tasks.candidates import ADAPTER_MODES, Candidate, get
from tasks.data_loading import fingerprint_documents, fingerprint_qa
from tasks.errors import UserError
from tasks.evaluation import evaluate_system
from tasks.finetuning import RUNTIME_ONLY_KEYS, FinetuneResult, train_adapter
from tasks.indexing import IndexBuild, build_index
from tasks.models import weights_key
from tasks.reranking import reranker_identity
from tasks.settings import PipelineConfig
from tasks.training import TrainState
from tasks.tune_settings import FinetuneSpace
from tasks.tuning import (
    KEPT_TRIAL_INDEXES,
    TrialOutcome,
    TuningData,
    assert_no_test,
    budget_left,
    configured,
    enqueue_baseline,
    open_study,
    optimize,
)

TRIAL_RUNTIME = ["finetune.checkpoint_every_steps=null"]  # a killed trial is retried whole; no checkpoints to keep
LATENCY_SAMPLE = 1  # trials are scored on quality; latency is the final comparison's to measure


def tuned_candidates(cfg: PipelineConfig) -> list[str]:
    """The candidates with a study: `tune.candidates`, else every evaluated candidate that trains an adapter."""
    names = cfg.tune.candidates if cfg.tune.candidates is not None else cfg.evaluation.candidates
    return [n for n in names if get(n).adapter is not None]


def _train_size_high(space: FinetuneSpace, train_size: int) -> int:
    """The largest training-set size on the space's grid that the train split can fill (at least `low`)."""
    grid = space.train_examples
    fits = (min(grid.high, train_size) - grid.low) // grid.step
    return grid.low + max(0, fits) * grid.step


def suggest_finetune(trial, space: FinetuneSpace, with_passages: bool, train_size: int) -> dict:
    """One point of the adapter's space (gold_probability only for adapters trained on passages)."""
    params = {
        "learning_rate": trial.suggest_float("learning_rate", space.learning_rate.low, space.learning_rate.high,
                                             log=True),
        "lora_r": trial.suggest_categorical("lora_r", space.lora_r),
        "lora_alpha_ratio": trial.suggest_categorical("lora_alpha_ratio", space.lora_alpha_ratio),
        "epochs": trial.suggest_int("epochs", space.epochs.low, space.epochs.high, step=space.epochs.step),
        "train_examples": trial.suggest_int("train_examples", space.train_examples.low,
                                            _train_size_high(space, train_size), step=space.train_examples.step),
    }
    if with_passages:
        params["gold_probability"] = trial.suggest_float("gold_probability", space.gold_probability.low,
                                                         space.gold_probability.high)
    return params


def baseline_params(cfg: PipelineConfig, mode: str, train_size: int) -> dict:
    """The config's own settings of the adapter, as the space names them (shown for the first trial)."""
    ft = cfg.finetune.for_mode(mode)
    with_passages = ADAPTER_MODES[mode].with_passages
    params = {"learning_rate": ft.learning_rate, "lora_r": ft.lora.r, "lora_alpha_ratio": ft.lora.alpha / ft.lora.r,
              "epochs": ft.epochs, "train_examples": min(ft.examples_cap(with_passages) or train_size, train_size)}
    if ft.max_steps:
        params["max_steps"] = ft.max_steps
    if with_passages:
        params["gold_probability"] = ft.raft.gold_probability
    return params


def finetune_overrides(mode: str, params: dict | None, eval_every_steps: int) -> list[str]:
    """Config overrides that give a trial's settings to adapter mode `mode` only; None: the config's own."""
    key = f"finetune.by_mode.{mode}"
    overrides = [f"{key}.eval_every_steps={eval_every_steps}"]
    if params is None:
        return overrides
    examples = "raft.max_train_examples" if ADAPTER_MODES[mode].with_passages else "max_train_examples"
    overrides += [f"{key}.learning_rate={params['learning_rate']:.6g}", f"{key}.lora.r={params['lora_r']}",
                  f"{key}.lora.alpha={max(1, round(params['lora_r'] * params['lora_alpha_ratio']))}",
                  f"{key}.epochs={params['epochs']}", f"{key}.max_steps=null",
                  f"{key}.{examples}={params['train_examples']}"]
    if "gold_probability" in params:
        overrides.append(f"{key}.raft.gold_probability={params['gold_probability']:.4g}")
    return overrides


def candidate_study_name(cfg: PipelineConfig, data: TuningData, name: str, base_model_dir: str) -> str:
    """Names a candidate study by what its trials read and how they are scored, so a rerun resumes it."""
    mode = get(name).adapter
    with_passages = ADAPTER_MODES[mode].with_passages
    key = json.dumps({
        "candidate": name, "base": weights_key(base_model_dir), "qa": fingerprint_qa(data.train, data.validation),
        "docs": fingerprint_documents(data.documents),
        "index": cfg.index.model_dump(mode="json", exclude={"root", "threads", "keep_versions"})
        if with_passages or get(name).retrieves else None,
        "finetune": cfg.finetune.for_mode(mode).model_dump(mode="json", exclude=RUNTIME_ONLY_KEYS | {"by_mode"}),
        "generation": cfg.generation.model_dump(mode="json"), "evaluation": cfg.evaluation.model_dump(mode="json"),
        "objective": cfg.champion.objective, "space": cfg.tune.finetune.model_dump(mode="json"), "seed": cfg.seed,
        "answer_type": cfg.data.answer_type, "labels": cfg.data.labels,
        **(reranker_identity(cfg.index) if with_passages or get(name).retrieves else {})}, sort_keys=True, default=str)
    return f"{cfg.mlflow.experiment}-{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def score_candidate(candidate: Candidate, cfg: PipelineConfig, data: TuningData, base_model_dir: str,
                    index: IndexBuild | None,
                    on_step: Callable[[TrainState], None] | None = None) -> tuple[dict[str, float], FinetuneResult]:
    """Train the candidate's adapter under `cfg` (reused when trained before) and score the candidate on the
    validation split: `objective` is the champion policy's, next to the answer type's headline metrics."""
    dataset = data.dataset("tuning")
    assert_no_test(dataset.qa)  # the train and the validation questions
    result = train_adapter(candidate.adapter, dataset, cfg, base_model_dir, index, on_step=on_step)
    quiet = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"latency_sample": LATENCY_SAMPLE})})
    report = evaluate_system(candidate, quiet, base_model_dir, result.adapter_dir,
                             index.path if candidate.retrieves and index else None, data.validation, dataset)
    value = champion.objective(report.metrics, cfg.champion)
    if math.isnan(value):
        missing = sorted(m for m in cfg.champion.objective if m not in report.metrics)
        raise UserError(f"champion.objective weighs {missing}, which {cfg.data.answer_type} answers do not report, so "
                        "no trial can be scored; weigh metrics this answer type reports "
                        f"(its headline: {list(DEFAULTS[cfg.data.answer_type].headline)})")
    shown = {*DEFAULTS[cfg.data.answer_type].headline, *cfg.champion.objective}
    return ({**{m: report.metrics[m] for m in sorted(shown) if m in report.metrics}, "objective": value,
             "eval_loss": result.eval_loss, "train_seconds": result.seconds, "steps": float(result.steps),
             "kept_step": float(result.best_step), "train_examples": float(result.train_examples)}, result)


def _pruning_hook(trial, baseline: bool, deadline: float) -> Callable[[TrainState], None]:
    """Report each held-out loss to the study (as -loss: the study maximises) and stop the trial when the pruner
    says so, or when the budget is spent; the baseline trial always finishes."""
    import optuna

    def hook(state: TrainState) -> None:
        if state.eval_steps and state.eval_steps[-1] == state.step and not math.isnan(state.eval_losses[-1]):
            trial.report(-state.eval_losses[-1], state.step)
            if not baseline and trial.should_prune():
                trial.set_user_attr("stopped", f"pruned at step {state.step}: held-out loss "
                                    f"{state.eval_losses[-1]:.3f}, worse than the median of earlier trials there")
                raise optuna.TrialPruned()
        if not baseline and time.monotonic() > deadline:
            trial.set_user_attr("stopped", f"stopped at step {state.step}: the study's budget is spent")
            raise optuna.TrialPruned()

    return hook


def run_candidate_study(cfg: PipelineConfig, data: TuningData, name: str, base_model_dir: str,
                        on_trial: Callable[[TrialOutcome], None] | None = None):
    """Run (or resume) the study of candidate `name` within what is left of its budget."""
    import optuna

    candidate = get(name)
    mode = candidate.adapter
    with_passages = ADAPTER_MODES[mode].with_passages
    assert_no_test(data.validation)
    space = cfg.tune.finetune
    study = open_study(candidate_study_name(cfg, data, name, base_model_dir), cfg,
                       optuna.pruners.MedianPruner(n_startup_trials=space.pruning_startup_trials))
    index = None
    if with_passages or candidate.retrieves:
        root = Path(cfg.cache_root) / "tuning" / study.study_name / "index"
        index_cfg = cfg.index.model_copy(update={"root": root, "keep_versions": KEPT_TRIAL_INDEXES})
        index = build_index(data.documents, fingerprint_documents(data.documents), index_cfg)
    enqueue_baseline(study, {}, cfg)

    def objective(trial) -> float:
        start = time.perf_counter()
        baseline = bool(trial.user_attrs.get("baseline"))
        train_size = len(data.train)
        params = (baseline_params(cfg, mode, train_size) if baseline
                  else suggest_finetune(trial, space, with_passages, train_size))
        overrides = finetune_overrides(mode, None if baseline else params, space.eval_every_steps)
        trial.set_user_attr("params", params)
        trial.set_user_attr("overrides", overrides)
        trial_cfg = configured(cfg, [*overrides, *TRIAL_RUNTIME])
        try:
            metrics, result = score_candidate(candidate, trial_cfg, data, base_model_dir, index,
                                              _pruning_hook(trial, baseline, deadline))
        except optuna.TrialPruned:
            if on_trial is not None:
                on_trial(TrialOutcome(trial.number, params, overrides, float("nan"), {}, time.perf_counter() - start,
                                      baseline, trial.user_attrs.get("stopped", "pruned")))
            raise
        trial.set_user_attr("metrics", metrics)
        if not result.reused:
            trial.set_user_attr("adapter", result.adapter_dir)
        if on_trial is not None:
            on_trial(TrialOutcome(trial.number, params, overrides, metrics["objective"], metrics,
                                  time.perf_counter() - start, baseline))
        return metrics["objective"]

    deadline = time.monotonic() + budget_left(study, cfg.tune)[1]  # read by the objective's pruning hook
    optimize(study, objective, cfg.tune, deadline)
    return study


def drop_trial_adapters(study, keep: TrialOutcome | None) -> int:
    """Delete the adapters this study's trials trained, but the best trial's (the tuned config reuses it)."""
    from optuna.trial import TrialState

    dropped = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        adapter = t.user_attrs.get("adapter")
        if adapter and (keep is None or t.number != keep.number) and Path(adapter).is_dir():
            shutil.rmtree(adapter)
            dropped += 1
    return dropped


def space_text(space: FinetuneSpace, mode: str) -> str:
    """What a candidate study searches, for the report."""
    gold = (f", gold passage probability {space.gold_probability.low:g}-{space.gold_probability.high:g}"
            if ADAPTER_MODES[mode].with_passages else "")
    return (f"{mode} adapter: learning rate {space.learning_rate.low:g}-{space.learning_rate.high:g} (log), LoRA r "
            f"{'/'.join(map(str, space.lora_r))}, alpha {'/'.join(f'{a:g}' for a in space.lora_alpha_ratio)} x r, "
            f"epochs {space.epochs.low}-{space.epochs.high}, training questions {space.train_examples.low}-"
            f"{space.train_examples.high}{gold}; pruned on held-out loss every {space.eval_every_steps} steps")
