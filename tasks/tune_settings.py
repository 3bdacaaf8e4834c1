"""Configuration of `ragtune tune` (the `tune:` section): budget, storage and the search space."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.candidates import CANDIDATES
from tasks.config_base import Strict
from tasks.index_settings import RetrievalMode


class IntRange(Strict):
    low: int = Field(ge=1)
    high: int = Field(ge=1)
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.high < self.low:
            raise ValueError("high must not be below low")
        return self


class FloatRange(Strict):
    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.high < self.low:
            raise ValueError("high must not be below low")
        return self


class RetrievalSpace(Strict):
    """What the retrieval study searches. Every trial gives the generator the same number of passage tokens
    (`passage_tokens`): `index.top_k` follows from the chunk length, so longer chunks cannot win by simply
    putting more text in the prompt."""

    strategies: list[Literal["tokens", "paragraph"]] = Field(
        default_factory=lambda: ["tokens", "paragraph"], min_length=1, description="Chunking strategies tried.")
    max_tokens: IntRange = Field(IntRange(low=48, high=240, step=16),
                                 description="Chunk lengths tried (capped at what the embedding model reads).")
    overlap_ratio: FloatRange = Field(FloatRange(low=0.0, high=0.25),
                                      description="Overlap between consecutive windows, as a share of max_tokens.")
    modes: list[RetrievalMode] = Field(default_factory=lambda: ["dense", "lexical", "hybrid"], min_length=1,
                                       description="Search modes tried (index.retrieval.mode).")
    rrf_k: IntRange = Field(IntRange(low=10, high=100, step=10), description="Fusion constants tried (hybrid).")
    rerank: bool = Field(True, description="With a configured index.retrieval.rerank, try trials with and "
                         "without it (reranking costs a cross-encoder pass per question).")
    passage_tokens: int | None = Field(
        None, ge=8, description="Passage tokens per question, equal for every trial; null: index.top_k x "
        "index.chunking.max_tokens of the config being tuned.")


class FinetuneSpace(Strict):
    """What a candidate study searches for the adapter of the candidate it tunes; the other finetune settings stay
    the config's. Trials train whole epochs (finetune.max_steps is lifted)."""

    learning_rate: FloatRange = Field(FloatRange(low=1.0e-4, high=1.0e-3), description="Learning rates tried "
                                      "(log scale).")
    lora_r: list[int] = Field(default_factory=lambda: [8, 16, 32], min_length=1, description="LoRA ranks tried.")
    lora_alpha_ratio: list[float] = Field(default_factory=lambda: [1.0, 2.0], min_length=1,
                                          description="LoRA alpha as a multiple of the rank.")
    epochs: IntRange = Field(IntRange(low=1, high=3), description="Epochs tried.")
    train_examples: IntRange = Field(IntRange(low=40, high=320, step=40), description="Training questions tried "
                                     "(at most the train split's).")
    gold_probability: FloatRange = Field(FloatRange(low=0.5, high=1.0), description="RAFT: share of training "
                                         "prompts with the gold passage forced in (adapters trained on passages).")
    eval_every_steps: int = Field(5, ge=1, description="Held-out loss every this many steps: a trial whose loss is "
                                  "worse than the median of earlier trials at the same step is pruned.")
    pruning_startup_trials: int = Field(2, ge=0, description="Trials finished before any is pruned.")

    @model_validator(mode="after")
    def _check(self) -> FinetuneSpace:
        if self.learning_rate.low <= 0:
            raise ValueError("learning_rate.low must be above 0 (searched on a log scale)")
        if self.gold_probability.high > 1:
            raise ValueError("gold_probability.high must not exceed 1")
        return self


class TuneConfig(Strict):
    budget_minutes: float = Field(10.0, gt=0, description="Wall-clock budget of each study: the retrieval study "
                                  "and every tuned candidate get the same (summed over resumes).")
    max_trials: int = Field(40, ge=1, description="Trials of a study at most (summed over resumes).")
    metric: Literal["recall", "mrr", "ndcg"] = Field(
        "ndcg", description="Retrieval study objective on validation at k = the trial's top_k: ndcg rewards the "
        "gold document in the top k, and more the higher it ranks (recall ties too often to steer a search).")
    relevance: Literal["auto", "answer", "document"] = Field(
        "auto", description="What makes a retrieved passage relevant in the retrieval study: `answer`: from the "
        "gold document and holding an accepted answer (normalised as SQuAD does); `document`: from the gold "
        "document; auto: answer for span answers, document otherwise.")
    storage: str | None = Field(None, description="Optuna storage URL (a killed search resumes from it); null: "
                                "sqlite:///<cache_root>/tuning/optuna.db.")
    heartbeat_s: int = Field(10, ge=1, description="Trial heartbeat: a trial silent for twice this long (its "
                             "process was killed) is marked failed and retried once by the next search.")
    output: Path | None = Field(None, description="Where the best settings are written as a config; null: "
                                "<config dir>/<config name>-tuned.yaml.")
    retrieval: RetrievalSpace = RetrievalSpace()
    candidates: list[str] | None = Field(
        None, description="Candidates whose adapter is tuned, one study each, after the retrieval study; null: "
        "every evaluated candidate that trains an adapter (tasks/candidates.py); []: the retrieval study only.")
    finetune: FinetuneSpace = FinetuneSpace()

    @field_validator("candidates")
    @classmethod
    def _tunable(cls, names: list[str] | None) -> list[str] | None:
        untunable = [n for n in names or [] if n not in CANDIDATES or CANDIDATES[n].adapter is None]
        if untunable:
            raise ValueError(f"{untunable} cannot be tuned here: a candidate study tunes an adapter; candidates "
                             f"with one: {[n for n, c in CANDIDATES.items() if c.adapter]}")
        return names
