"""Tuning (`ragtune tune`): Optuna studies on the validation split, stored so a killed search resumes.

The retrieval study searches chunking, search mode and fusion for the retrieving candidates, scored by
how high the first relevant passage ranks for each validation question (`first_relevant`). Every trial
gives the generator the same number of passage tokens, so `index.top_k` follows from the chunk length. A
study reads the documents and the validation questions only: `tuning_data` drops the test split first.
The config's own settings are the first trial (the baseline the best trial is compared with).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.data_loading import Dataset, fingerprint_documents, fingerprint_qa
from tasks.errors import UserError
from tasks.exclusive import exclusive, lock_name
from tasks.index_settings import IndexConfig
from tasks.indexing import build_index
from tasks.metrics import retrieval_scores
from tasks.models import embedding_model_dir, weights_key
from tasks.reranking import reranker_identity
from tasks.retrieval import Hit, Retriever, embedder
from tasks.settings import PipelineConfig, apply_overrides, config_from_dict
from tasks.text import normalize_answer
from tasks.tune_settings import RetrievalSpace, TuneConfig

RELEVANT = "relevant"  # the label of the first relevant passage, scored like a gold document id
KEPT_TRIAL_INDEXES = 2  # index versions kept under a study's own index root (trial indexes are rebuilt cheaply)


class TestSplitRead(AssertionError):
    """A tuning step was handed test questions (a bug: the test split is for the final comparison only)."""


@dataclass(frozen=True)
class TuningData:
    documents: pd.DataFrame
    validation: pd.DataFrame
    train: pd.DataFrame  # candidate studies train adapters on it

    def dataset(self, source: str) -> Dataset:
        """The train and validation questions as a dataset (what the finetune stage reads), without the test split."""
        qa = pd.concat([self.train, self.validation], ignore_index=True)
        return Dataset(self.documents, qa, fingerprint_qa(qa), source)


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    params: dict
    overrides: list[str]
    value: float
    metrics: dict[str, float]
    seconds: float
    baseline: bool
    stopped: str = ""  # why a trial stopped before it was scored (pruned, or the budget ran out)


def tuning_data(dataset: Dataset, cfg: PipelineConfig) -> TuningData:
    """What a study may read: the documents and the validation questions (capped as evaluation caps them)."""
    validation = dataset.split("validation", cfg.data.max_questions_per_split.get("validation"))
    if validation.empty:
        raise UserError(f"{dataset.source}: tuning needs validation questions (rule: at least one QA row with "
                        "split == 'validation'), found none; add a validation split to the QA table, or for SQuAD "
                        "data give it a share in data.split_fractions")
    return TuningData(dataset.documents, validation, dataset.split("train"))


def assert_no_test(qa: pd.DataFrame) -> None:
    if "split" in qa and (qa["split"] == "test").any():
        raise TestSplitRead("tuning was handed test questions: only the validation split may steer a search")


def passage_budget(cfg: PipelineConfig) -> int:
    return cfg.tune.retrieval.passage_tokens or cfg.index.top_k * cfg.index.chunking.max_tokens


def chunk_token_limit(cfg: IndexConfig) -> int:
    """The longest chunk the embedding model reads whole ([CLS] and [SEP] take two positions)."""
    return embedder(cfg).max_seq_length - 2


def suggest_retrieval(trial, space: RetrievalSpace, token_limit: int, can_rerank: bool) -> dict:
    """One point of the retrieval space (Optuna define-by-run: rrf_k only for hybrid search; reranking on or off
    only where a reranker is configured)."""
    high = max(space.max_tokens.low, min(space.max_tokens.high, token_limit))
    params = {
        "chunking": trial.suggest_categorical("chunking", space.strategies),
        "max_tokens": trial.suggest_int("max_tokens", space.max_tokens.low, high, step=space.max_tokens.step),
        "overlap_ratio": trial.suggest_float("overlap_ratio", space.overlap_ratio.low, space.overlap_ratio.high),
        "mode": trial.suggest_categorical("mode", space.modes),
    }
    if params["mode"] == "hybrid":
        params["rrf_k"] = trial.suggest_int("rrf_k", space.rrf_k.low, space.rrf_k.high, step=space.rrf_k.step)
    if can_rerank and space.rerank:
        params["rerank"] = trial.suggest_categorical("rerank", [True, False])
    return params


def baseline_params(cfg: PipelineConfig) -> dict:
    """The config's own retrieval settings as a point of the space."""
    index = cfg.index
    params = {"chunking": index.chunking.strategy, "max_tokens": index.chunking.max_tokens,
              "overlap_ratio": index.chunking.overlap_tokens / index.chunking.max_tokens,
              "mode": index.retrieval.mode}
    if index.retrieval.mode == "hybrid":
        params["rrf_k"] = index.retrieval.rrf_k
    if index.retrieval.rerank is not None and cfg.tune.retrieval.rerank:
        params["rerank"] = True
    return params


def retrieval_overrides(params: dict, passage_tokens: int, raft_follows: bool) -> list[str]:
    """Config overrides (`key.path=value`) that give a trial's settings; `raft_follows`: RAFT trains with as
    many passages as retrieval gives (the config paired them)."""
    max_tokens = params["max_tokens"]
    top_k = max(1, passage_tokens // max_tokens)
    overrides = [f"index.chunking.strategy={params['chunking']}", f"index.chunking.max_tokens={max_tokens}",
                 f"index.chunking.overlap_tokens={min(round(params['overlap_ratio'] * max_tokens), max_tokens - 1)}",
                 f"index.retrieval.mode={params['mode']}", f"index.top_k={top_k}"]
    if "rrf_k" in params:
        overrides.append(f"index.retrieval.rrf_k={params['rrf_k']}")
    if params.get("rerank") is False:
        overrides.append("index.retrieval.rerank=null")
    if raft_follows:
        overrides.append(f"finetune.raft.top_k={top_k}")
    return overrides


def configured(cfg: PipelineConfig, overrides: list[str], source: str = "tuning trial") -> PipelineConfig:
    raw = apply_overrides(cfg.model_dump(mode="json"), overrides)
    return config_from_dict(raw, source, overrides)


def by_answer(cfg: PipelineConfig) -> bool:
    relevance = cfg.tune.relevance
    return relevance == "answer" or (relevance == "auto" and cfg.data.answer_type == "span")


def first_relevant(hits: list[Hit], answers: list[str], gold_doc: str, need_answer: bool) -> int | None:
    """Rank (from 1) of the first passage from the gold document that, if `need_answer`, holds an answer."""
    wanted = [f" {normalize_answer(a)} " for a in answers]
    for rank, hit in enumerate(hits, start=1):
        if hit.doc_id == gold_doc and (not need_answer or any(w in f" {normalize_answer(hit.text)} " for w in wanted)):
            return rank
    return None


def score_retrieval(data: TuningData, index_cfg: IndexConfig, metric: str, need_answer: bool) -> dict[str, float]:
    """Validation retrieval at k = top_k of these index settings: recall, mrr and ndcg of the first relevant
    passage (tasks.tuning.first_relevant), the gold document's recall, and `objective` (the study's metric)."""
    assert_no_test(data.validation)
    build = build_index(data.documents, fingerprint_documents(data.documents), index_cfg)
    k = index_cfg.top_k
    hits = Retriever(build.path, index_cfg).search(data.validation["question"].tolist(), k)
    per_question = []
    for row, qa in zip(hits, data.validation.itertuples(index=False), strict=True):
        rank = first_relevant(row, list(qa.answer), qa.doc_id, need_answer)
        relevant = retrieval_scores([RELEVANT if i == rank else "" for i in range(1, len(row) + 1)], RELEVANT, k)
        per_question.append({**relevant, "doc_recall_at_k": retrieval_scores([h.doc_id for h in row], qa.doc_id,
                                                                             k)["recall_at_k"]})
    scores = {name: float(np.mean([q[source] for q in per_question]))
              for name, source in (("recall_at_k", "recall_at_k"), ("mrr_at_k", "mrr"), ("ndcg_at_k", "ndcg_at_k"),
                                   ("doc_recall_at_k", "doc_recall_at_k"))}
    return {**scores, "objective": scores[f"{metric}_at_k"], "top_k": float(k), "num_chunks": float(build.num_chunks)}


def study_name(cfg: PipelineConfig, data: TuningData, kind: str = "retrieval") -> str:
    """Names a study by what its trials are measured on, so a rerun resumes it and changed data starts afresh."""
    key = json.dumps({"docs": fingerprint_documents(data.documents), "validation": fingerprint_qa(data.validation),
                      "embedding": weights_key(str(embedding_model_dir(cfg.index))), "metric": cfg.tune.metric,
                      "space": cfg.tune.retrieval.model_dump(
                          mode="json", exclude=None if cfg.index.retrieval.rerank else {"rerank"}),
                      "passages": passage_budget(cfg),
                      "relevance": by_answer(cfg),
                      "faiss": cfg.index.faiss.model_dump(mode="json"),
                      "lexical": cfg.index.retrieval.lexical.model_dump(mode="json"),
                      **({"rerank": cfg.index.retrieval.rerank.model_dump(mode="json"), **reranker_identity(cfg.index)}
                         if cfg.index.retrieval.rerank else {})}, sort_keys=True)
    return f"{cfg.mlflow.experiment}-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def storage_url(cfg: PipelineConfig) -> str:
    """The study storage (a SQLite file's directory is created; other URLs are used as given)."""
    url = cfg.tune.storage or f"sqlite:///{(Path(cfg.cache_root) / 'tuning' / 'optuna.db').resolve()}"
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def check_shared_storage(cfg: PipelineConfig) -> None:
    """Studies fanned out to a Dask scheduler on other machines need a storage every worker reaches."""
    url = storage_url(cfg)
    if cfg.scale.dask.enabled and cfg.scale.dask.address and url.startswith("sqlite:"):
        raise UserError(f"tune.storage is {url}, a file on this machine, but scale.dask.address sends the candidate "
                        "studies to other machines: set tune.storage to a database server every worker reaches, "
                        "e.g. postgresql://user@host/optuna")


def open_study(name: str, cfg: PipelineConfig, pruner=None):
    """Create or load the study in `tune.storage`; a trial whose process died is failed after 2 heartbeats and
    retried once. Creating the storage's tables is done under a lock: processes starting together on a new
    storage would otherwise both create them."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retry callback
    url, tune = storage_url(cfg), cfg.tune
    with exclusive(lock_name("optuna-storage", hashlib.sha256(url.encode()).hexdigest()[:12]), locks_dir(cfg)):
        storage = RDBStorage(url, heartbeat_interval=tune.heartbeat_s, grace_period=2 * tune.heartbeat_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                                   sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=pruner)


def locks_dir(cfg: PipelineConfig) -> Path:
    return Path(cfg.cache_root) / "tuning" / ".locks"


def enqueue_baseline(study, params: dict, cfg: PipelineConfig) -> None:
    """The config's own settings become a new study's first trial, once, even when several processes (on one
    machine, or workers sharing the pipeline's locks) open the study at the same moment."""
    with exclusive(lock_name("study", study.study_name), locks_dir(cfg)):
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(params, user_attrs={"baseline": True})


def load_study(name: str, cfg: PipelineConfig):
    """A stored study, to read (its trials and plot)."""
    import optuna

    return optuna.load_study(study_name=name, storage=storage_url(cfg))


def spent(study) -> tuple[int, float]:
    """Finished trials and their summed seconds (a killed trial's time is not counted)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return len(done), sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done)


def run_retrieval_study(cfg: PipelineConfig, data: TuningData,
                        on_trial: Callable[[TrialOutcome], None] | None = None):
    """Run (or resume) the retrieval study within what is left of `tune.budget_minutes` and `tune.max_trials`."""
    assert_no_test(data.validation)
    study = open_study(study_name(cfg, data), cfg)
    budget = passage_budget(cfg)
    limit = chunk_token_limit(cfg.index)
    root = Path(cfg.cache_root) / "tuning" / study.study_name / "index"
    enqueue_baseline(study, baseline_params(cfg), cfg)

    def objective(trial) -> float:
        start = time.perf_counter()
        # an enqueued trial gets its fixed values
        params = suggest_retrieval(trial, cfg.tune.retrieval, limit, cfg.index.retrieval.rerank is not None)
        overrides = retrieval_overrides(params, budget, cfg.finetune.raft.top_k == cfg.index.top_k)
        index_cfg = configured(cfg, overrides).index.model_copy(update={"root": root,
                                                                         "keep_versions": KEPT_TRIAL_INDEXES})
        metrics = score_retrieval(data, index_cfg, cfg.tune.metric, by_answer(cfg))
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("metrics", metrics)
        if on_trial is not None:
            on_trial(TrialOutcome(trial.number, params, overrides, metrics["objective"], metrics,
                                  time.perf_counter() - start, "baseline" in trial.user_attrs))
        return metrics["objective"]

    optimize(study, objective, cfg.tune)
    return study


def budget_left(study, tune: TuneConfig) -> tuple[int, float]:
    """Trials and seconds left of the study's budget (what earlier runs of it spent counts)."""
    done, seconds = spent(study)
    return tune.max_trials - done, tune.budget_minutes * 60 - seconds


def optimize(study, objective: Callable, tune: TuneConfig, deadline: float | None = None) -> None:
    """Run trials while the budget lasts, or until `deadline` (time.monotonic()) when the objective stops a trial
    at it: no trial starts after it. A trial that started in time finishes unless the objective stops it.
    Processes sharing the study stop together at `tune.max_trials` finished trials (each may finish the one
    it is running)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    trials_left, seconds_left = budget_left(study, tune)
    if deadline is not None:
        seconds_left = min(seconds_left, deadline - time.monotonic())
    if trials_left > 0 and seconds_left > 0:
        shared_cap = MaxTrialsCallback(tune.max_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        study.optimize(objective, n_trials=trials_left, timeout=seconds_left, gc_after_trial=True,
                       callbacks=[shared_cap])


def outcomes(study) -> list[TrialOutcome]:
    """Every finished trial of the study, in trial order."""
    from optuna.trial import TrialState

    return [TrialOutcome(t.number, t.user_attrs.get("params", t.params), t.user_attrs["overrides"], t.value,
                         t.user_attrs["metrics"], (t.datetime_complete - t.datetime_start).total_seconds(),
                         bool(t.user_attrs.get("baseline")))
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def space_text(space: RetrievalSpace, passage_tokens: int, can_rerank: bool = False) -> str:
    """What the retrieval study searches, for the report."""
    return (f"chunking {'/'.join(space.strategies)}, {space.max_tokens.low}-{space.max_tokens.high} tokens, overlap "
            f"{space.overlap_ratio.low:g}-{space.overlap_ratio.high:g}, search {'/'.join(space.modes)}, rrf_k "
            f"{space.rrf_k.low}-{space.rrf_k.high}{', reranker on/off' if can_rerank and space.rerank else ''}; "
            f"{passage_tokens} passage tokens per question")


def stopped_count(study) -> int:
    """Trials pruned or stopped by the budget."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
