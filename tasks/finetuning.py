"""Finetune stage: train (or reuse, or resume) the LoRA adapter of one mode (tasks.candidates.ADAPTER_MODES).

Examples and batching are in tasks.finetune_data, the loop and its checkpoints in tasks.training.
An adapter is keyed by everything that shapes its weights and nothing else: the train and
validation QA rows, the base model, the index version for modes that read passages (it stands for
the documents), the finetune config, the prompt settings, the seed and the runtime. It is reused
when that key was trained before, so an edited document retrains only the RAFT adapter, and a new
test question retrains nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks.artifact_store import ArtifactStore, local_copy
from tasks.atomic import atomic_directory
from tasks.candidates import ADAPTER_MODES, Mode
from tasks.data_loading import Dataset, fingerprint_qa
from tasks.exclusive import exclusive, lock_name
from tasks.finetune_data import build_examples, encode_example
from tasks.heap import return_freed_memory
from tasks.indexing import IndexBuild
from tasks.models import weights_key
from tasks.records import RunRecord
from tasks.retrieval import Retriever
from tasks.settings import FinetuneConfig, GenerationConfig, PipelineConfig
from tasks.training import Runtime, TrainState, prepare_model, select_runtime, train_lora

if TYPE_CHECKING:
    from peft import PeftModel

# Config keys that change where or how often things are written, never the trained weights.
RUNTIME_ONLY_KEYS = {"output_root", "threads", "checkpoint_every_steps", "resume", "gpu"}
RUNTIME_CARRIED_KEYS = {"dtype", "pad_to_multiple_of"}  # in an adapter's key through Runtime.identity()
PROMPT_KEYS = {"system_prompt", "context_instruction"}  # the generation settings that shape training prompts


@dataclass
class FinetuneResult:
    mode: str
    adapter_dir: str
    train_examples: int
    steps: int
    train_losses: list[float] = field(default_factory=list)
    eval_loss: float = float("nan")
    perplexity: float = float("nan")
    train_tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    gold_rate: float = float("nan")
    reused: bool = False
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    resumed_from_step: int = 0
    model_load_seconds: float = float("nan")
    device: str = "cpu"
    dtype: str = "float32"  # of the frozen base weights on CPU; the autocast dtype on CUDA
    batch_size: int = 0
    micro_batch_tokens: int = 0  # padded tokens per micro-batch under finetune.memory_budget_gb (0: whole batches)
    checkpointing: bool = False  # activation checkpointing (only when one example did not fit the budget otherwise)
    fetched: bool = False  # taken from the shared artifact store, not trained here
    waited_s: float = 0.0  # for another run training the same adapter

    @property
    def final_train_loss(self) -> float:
        tail = self.train_losses[-max(1, len(self.train_losses) // 10):]
        return sum(tail) / len(tail) if tail else float("nan")


@dataclass(frozen=True)
class TrainedAdapter:
    """A trained (or reused) adapter and the MLflow run that logged it (the lineage of what uses it)."""

    result: FinetuneResult
    run_id: str

    @property
    def adapter_dir(self) -> str:
        return self.result.adapter_dir


def adapter_key(mode: Mode, base_model_dir: str, qa_fingerprint: str, retrieval: dict | None,
                cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int, runtime: Runtime) -> str:
    """Names an adapter by everything that shapes its weights (not by where or how often it is saved);
    `retrieval` is the retriever's identity for modes trained on retrieved passages; `cfg` is the mode's own
    settings (FinetuneConfig.for_mode). Settings added later enter the key only when set, so adapters trained
    before they existed are still found."""
    payload = json.dumps({"mode": mode, "base": weights_key(base_model_dir), "fp": qa_fingerprint,
                          "index": retrieval,
                          "cfg": cfg.model_dump(mode="json", exclude=RUNTIME_ONLY_KEYS | RUNTIME_CARRIED_KEYS | (
                              {"by_mode"}) | (set() if ADAPTER_MODES[mode].with_passages else {"raft"}) | (
                              set() if cfg.eval_every_steps else {"eval_every_steps"})),
                          "gen": gen_cfg.model_dump(mode="json", include=PROMPT_KEYS), "seed": seed,
                          "runtime": runtime.identity()},
                         sort_keys=True)
    return f"{mode}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def _save_adapter(model: PeftModel, result: FinetuneResult, out_dir: Path) -> None:
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        (staging / "result.json").write_text(json.dumps(asdict(result), indent=2))


def finetune(mode: Mode, base_model_dir: str, train_qa: pd.DataFrame, eval_qa: pd.DataFrame, qa_fingerprint: str,
             cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int,
             retriever: Retriever | None = None, progress: bool = True,
             on_step: Callable[[TrainState], None] | None = None, store: ArtifactStore | None = None) -> FinetuneResult:
    """Train a LoRA adapter under cfg.output_root, or reuse an identical earlier one (here or in the shared
    `store`), or resume an interrupted one. An adapter is trained once across machines: under its lock, and
    published to the store when trained here."""
    runtime = select_runtime(cfg)
    retrieval = retriever.identity if (ADAPTER_MODES[mode].with_passages and retriever) else None
    key = adapter_key(mode, base_model_dir, qa_fingerprint, retrieval, cfg, gen_cfg, seed, runtime)
    out_dir = Path(cfg.output_root) / key
    with exclusive(lock_name("adapter", key), Path(cfg.output_root) / ".locks") as waited:
        fetched = not (out_dir / "result.json").is_file() and store is not None and store.fetch("adapters", key,
                                                                                                 out_dir)
        if (out_dir / "result.json").is_file():
            result = FinetuneResult(**json.loads((out_dir / "result.json").read_text()))
            result.adapter_dir, result.reused, result.fetched, result.waited_s = str(out_dir), True, fetched, waited
        else:
            result = _train(mode, key, base_model_dir, train_qa, eval_qa, cfg, gen_cfg, seed, runtime, retriever,
                            progress, on_step)
            result.waited_s = waited
        if store is not None:
            store.publish("adapters", key, out_dir)  # no-op when the store has it
    return_freed_memory()  # the model and the step's activations: the next stage loads its own
    return result


def _train(mode: Mode, key: str, base_model_dir: str, train_qa: pd.DataFrame, eval_qa: pd.DataFrame,
           cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int, runtime: Runtime, retriever: Retriever | None,
           progress: bool, on_step: Callable[[TrainState], None] | None) -> FinetuneResult:
    import torch
    from transformers import AutoTokenizer

    out_dir = Path(cfg.output_root) / key
    with_passages = ADAPTER_MODES[mode].with_passages
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cap = cfg.examples_cap(with_passages)
    if cap is not None:
        train_qa = train_qa.sample(n=min(cap, len(train_qa)), random_state=seed).sort_index()
    train_examples = build_examples(train_qa, mode, tokenizer, gen_cfg, cfg, retriever, seed)
    eval_examples = build_examples(eval_qa, mode, tokenizer, gen_cfg, cfg, retriever, seed + 1)
    train_enc = [encode_example(e, tokenizer, cfg.max_length) for e in train_examples]
    eval_enc = [encode_example(e, tokenizer, cfg.max_length) for e in eval_examples]

    model, load_seconds = prepare_model(base_model_dir, cfg.lora, runtime, seed)
    checkpoint_dir = Path(cfg.output_root) / ".checkpoints" / key
    state = train_lora(model, train_enc, eval_enc, cfg, runtime, seed, tokenizer.pad_token_id, checkpoint_dir,
                       progress, f"finetune[{mode}]", on_step)
    best = state.best_loss if math.isfinite(state.best_loss) else float("nan")
    result = FinetuneResult(
        mode=mode, adapter_dir=str(out_dir), train_examples=len(train_enc), steps=state.step,
        train_losses=state.losses, eval_loss=best, perplexity=math.exp(best) if math.isfinite(best) else float("nan"),
        train_tokens=state.tokens, seconds=state.seconds,
        tokens_per_second=state.tokens / state.seconds if state.seconds else 0.0,
        gold_rate=(sum(e.has_gold for e in train_examples) / len(train_examples)) if with_passages else float("nan"),
        eval_steps=state.eval_steps, eval_losses=state.eval_losses, best_step=state.best_step,
        stopped_early=state.stopped_early, resumed_from_step=state.resumed_from_step,
        model_load_seconds=load_seconds, device=runtime.device, dtype=runtime.dtype, batch_size=runtime.batch_size,
        micro_batch_tokens=state.micro_batch_tokens, checkpointing=state.checkpointing,
    )
    _save_adapter(model, result, out_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with suppress(OSError):  # other runs' checkpoints may still be there
        checkpoint_dir.parent.rmdir()
    return result


def train_adapter(mode: Mode, dataset: Dataset, cfg: PipelineConfig, base_model_dir: str,
                  index: IndexBuild | None, store: ArtifactStore | None = None,
                  on_step: Callable[[TrainState], None] | None = None) -> FinetuneResult:
    """The finetune stage for one adapter mode: train on the train split, keep the adapter with the lowest
    validation loss; a mode whose prompts carry passages retrieves them from `index`."""
    with_passages = ADAPTER_MODES[mode].with_passages
    if with_passages and index is None:
        raise ValueError(f"adapter mode {mode} trains on retrieved passages: build the index first")
    retriever = Retriever(local_copy(index.path, cfg.index.root, "index", store), cfg.index) if with_passages else None
    train, validation = dataset.split("train"), dataset.split("validation")
    # Keyed by what it reads: the train/validation QA (and, through the index version, the documents
    # for modes that read passages), so an edited document or a new test question retrains nothing else.
    return finetune(mode, base_model_dir, train, validation, fingerprint_qa(train, validation),
                    cfg.finetune.for_mode(mode), cfg.generation, cfg.seed, retriever, store=store, on_step=on_step)


def finetune_record(result: FinetuneResult, cfg: FinetuneConfig, fingerprint: str, base_model: str) -> RunRecord:
    """The finetune run in MLflow: settings, loss curves, the kept adapter's held-out loss, the adapter itself."""
    from tasks.report import loss_figure

    record = RunRecord(
        tags={"mode": result.mode, "adapter": Path(result.adapter_dir).name, "reused": str(result.reused),
              "fetched": str(result.fetched),
              "data_fingerprint": fingerprint, "base_model": base_model, "device": result.device,
              "dtype": result.dtype, "stopped_early": str(result.stopped_early),
              "resumed_from_step": str(result.resumed_from_step)},
        params={"mode": result.mode, "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "epochs": cfg.epochs,
                "max_steps": cfg.max_steps, "batch_size": result.batch_size, "learning_rate": cfg.learning_rate,
                "raft_top_k": cfg.raft.top_k, "raft_gold_probability": cfg.raft.gold_probability,
                "max_train_examples": cfg.max_train_examples, "raft_max_train_examples": cfg.raft.max_train_examples,
                "eval_every_steps": cfg.eval_every_steps,
                "early_stopping_patience": cfg.early_stopping.patience,
                "early_stopping_min_delta": cfg.early_stopping.min_delta,
                "checkpoint_every_steps": cfg.checkpoint_every_steps, "memory_budget_gb": cfg.memory_budget_gb,
                "micro_batch_tokens": result.micro_batch_tokens, "activation_checkpointing": result.checkpointing},
        # eval_loss/perplexity: the kept (best) adapter's held-out values.
        metrics={k: v for k, v in {
            "eval_loss": result.eval_loss, "perplexity": result.perplexity, "train_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "train_examples": result.train_examples,
            "model_load_seconds": result.model_load_seconds, "best_step": result.best_step,
            "raft_gold_rate": result.gold_rate}.items() if not math.isnan(v)},
        series={"train_loss": list(enumerate(result.train_losses, start=1))},
        # A reused adapter was logged by the run that trained it; its directory name is the content key.
        directories={} if result.reused else {"adapter": result.adapter_dir},
    )
    evals = [(step, loss) for step, loss in zip(result.eval_steps, result.eval_losses, strict=True)
             if not math.isnan(loss)]
    record.series["epoch_eval_loss"] = evals
    record.series["epoch_perplexity"] = [(step, math.exp(loss)) for step, loss in evals]
    if result.train_losses:
        record.figures["plots/loss_curve.png"] = lambda: loss_figure(result)
    return record


def _micro_batches(result: FinetuneResult) -> str:
    if not result.micro_batch_tokens:
        return ""
    return (f" in micro-batches of <= {result.micro_batch_tokens} tokens"
            f"{' with activation checkpointing' if result.checkpointing else ''}")


def finetune_summary(result: FinetuneResult) -> str:
    how = "fetched from the shared store" if result.fetched else "reused" if result.reused else "trained"
    waited = f" after waiting {result.waited_s:.0f} s for another run" if result.waited_s >= 1 else ""
    return (f"finetune[{result.mode}] {how}{waited} on {result.device} ({result.dtype}): "
            f"{result.steps} steps{_micro_batches(result)}, {result.tokens_per_second:.0f} tokens/s, "
            f"best eval loss {result.eval_loss:.3f} "
            f"(step {result.best_step}), perplexity {result.perplexity:.2f}"
            f"{', stopped early' if result.stopped_early else ''}; base model loaded in "
            f"{result.model_load_seconds:.2f} s")
