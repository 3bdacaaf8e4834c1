"""Benchmark: ragtune's LoRA training loop vs a plain transformers.Trainer + peft script.

Both sides train the same base model on the same encoded examples (same token ids, same
answer-only labels) with the same LoRA config, optimizer (torch AdamW), learning-rate schedule,
gradient clipping, batch size, seed and thread count, for the same number of optimizer steps.
They differ only where ragtune's loop is designed to differ:

- ours:  batches of similar length (random pools sorted by length), each padded to its own
         longest sequence; only answer positions are projected to the vocabulary.
- plain: random batches padded to their longest sequence (DataCollatorForSeq2Seq), the model's
         standard causal LM loss over full logits with prompt labels at -100.

Each side runs in its own subprocess. Reported per side:
- tokens/s: real (non-pad) tokens trained on / seconds in the training steps (model loading,
  data preparation and Trainer setup excluded on both sides);
- GFLOP/s: 6 * N * real tokens / seconds, with N the base model's parameter count (the usual
  2N forward + 4N backward per token; a LoRA backward skips the frozen weights' gradients and
  ours skips most of the vocabulary projection, so this is "useful model FLOPs", equal work
  credited to both sides, not hardware FLOPs);
- step peak RSS: the resident-set high-water mark of one forward+backward on the same batch for
  both sides (the benchmark's longest examples), in a fresh process after loading: Linux
  /proc/self/clear_refs resets the mark right before the step (ru_maxrss over the whole process
  where that is not allowed). Measured on one step because the CPU allocator keeps freed memory,
  so a mark over many steps of varying shapes measures fragmentation more than the step. That
  step also warms both sides up before the timed steps.

Run: .venv/bin/python benchmarks/bench_finetune.py [--mode raft|closed_book] [--steps 6] [--examples 48]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()


@dataclass
class SideResult:
    side: str
    steps: int
    real_tokens: int
    padded_tokens: int
    seconds: float
    mean_loss: float
    rss_before_mib: float
    step_peak_rss_mib: float
    peak_method: str
    params: int

    @property
    def tokens_per_second(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def gflops(self) -> float:
        return 6 * self.params * self.real_tokens / self.seconds / 1e9


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> str:
    """Reset the RSS high-water mark; returns how the peak will be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_mib(method: str) -> float:
    kib = _status_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def _frozen_params(model) -> int:
    """Parameters of the base model (all but the LoRA ones), tied weights counted once."""
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


def _longest(work: dict) -> list[int]:
    """Indices of the batch both sides measure memory on: the longest examples."""
    encoded = work["encoded"]
    return sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]), reverse=True)[: work["finetune"]["batch_size"]]


def _probe_step(model, loss_fn) -> tuple[float, float, str]:
    """RSS before, and high-water mark of, one forward+backward (no optimizer step; gradients dropped)."""
    model.train()
    rss_before = _status_kib("VmRSS") / 1024
    method = _reset_peak()
    loss_fn().backward()
    peak = _peak_mib(method)
    model.zero_grad(set_to_none=True)
    return rss_before, peak, method


def run_ours(work: dict) -> SideResult:
    import torch

    from tasks import finetune_data, training
    from tasks.settings import FinetuneConfig

    torch.set_num_threads(work["threads"])
    cfg = FinetuneConfig.model_validate(work["finetune"])
    runtime = training.Runtime("cpu", "float32", cfg.batch_size)
    encoded = [(ids, labels) for ids, labels in work["encoded"]]
    model, _ = training.prepare_model(work["model_dir"], cfg.lora, runtime, work["seed"])
    lengths = [len(ids) for ids, _ in encoded]
    first_epoch = finetune_data.length_grouped_batches(lengths, cfg.batch_size, cfg.length_group_pool,
                                                    random.Random(work["seed"]))[: work["steps"]]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in first_epoch)
    probe = finetune_data.collate([encoded[i] for i in _longest(work)], work["pad_id"])
    rss_before, peak, method = _probe_step(model, lambda: training.answer_loss(model, probe)[0])
    state = training.train_lora(model, encoded, [], cfg, runtime, work["seed"], work["pad_id"], progress=False)
    return SideResult("ours", state.step, state.tokens, padded, state.seconds, sum(state.losses) / len(state.losses),
                      rss_before, peak, method, _frozen_params(model))


def run_plain(work: dict) -> SideResult:
    """The plain script: Trainer + peft, pad-to-longest collator, standard causal LM loss."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    ft = work["finetune"]
    tokenizer = AutoTokenizer.from_pretrained(work["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.set_num_threads(work["threads"])
    model = AutoModelForCausalLM.from_pretrained(work["model_dir"])
    torch.manual_seed(work["seed"])
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=ft["lora"]["r"],
                                             lora_alpha=ft["lora"]["alpha"], lora_dropout=ft["lora"]["dropout"],
                                             target_modules=ft["lora"]["target_modules"]))
    dataset = [{"input_ids": ids, "labels": labels} for ids, labels in work["encoded"]]
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest")
    probe = collator([dataset[i] for i in _longest(work)])
    rss_before, peak, method = _probe_step(model, lambda: model(**probe).loss)
    counts = {"real": 0, "padded": 0, "losses": []}
    clock: dict[str, float] = {}

    class CountingTrainer(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            counts["real"] += int(inputs["attention_mask"].sum())
            counts["padded"] += inputs["input_ids"].numel()
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            counts["losses"].append(float(loss.detach()))
            return loss

    class Clock(TrainerCallback):
        def on_train_begin(self, *_args, **_kwargs):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *_args, **_kwargs):
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=ft["batch_size"], max_steps=work["steps"],
            learning_rate=ft["learning_rate"], weight_decay=ft["weight_decay"],
            warmup_steps=int(work["steps"] * ft["warmup_ratio"]),  # ours: int(total_steps * warmup_ratio)
            lr_scheduler_type="linear", max_grad_norm=ft["max_grad_norm"], optim="adamw_torch", seed=work["seed"],
            use_cpu=True, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0)
        trainer = CountingTrainer(model=model, args=args, train_dataset=dataset, callbacks=[Clock()],
                                  data_collator=collator)
        trainer.train()
    return SideResult("plain", len(counts["losses"]), counts["real"], counts["padded"], clock["end"] - clock["start"],
                      sum(counts["losses"]) / len(counts["losses"]), rss_before, peak, method, _frozen_params(model))


def prepare_work(args: argparse.Namespace) -> dict:
    """Encode the benchmark's examples once, so both sides train on identical token sequences."""
    from transformers import AutoTokenizer

    from tasks import finetune_data
    from tasks.data_loading import load_dataset
    from tasks.indexing import build_index
    from tasks.models import resolve_model_dir
    from tasks.retrieval import Retriever
    from tasks.settings import load_config

    cfg = load_config(args.config)
    ft = cfg.finetune.model_copy(update={"batch_size": args.batch_size or cfg.finetune.batch_size,
                                         "max_steps": args.steps, "checkpoint_every_steps": None})
    model_dir = args.model_dir or resolve_model_dir(cfg.base_model, cfg.model_cache)
    dataset = load_dataset(cfg.data)
    train = dataset.split("train")
    train = train.sample(n=min(args.examples, len(train)), random_state=cfg.seed).sort_index()
    retriever = None
    if args.mode == "raft":
        retriever = Retriever(build_index(dataset.documents, dataset.fingerprint, cfg.index).path, cfg.index)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = finetune_data.build_examples(train, args.mode, tokenizer, cfg.generation, ft, retriever, cfg.seed)
    return {"model_dir": model_dir, "seed": cfg.seed, "steps": args.steps, "pad_id": tokenizer.pad_token_id,
            "threads": args.threads or ft.threads or os.cpu_count() or 1, "finetune": ft.model_dump(mode="json"),
            "encoded": [finetune_data.encode_example(e, tokenizer, ft.max_length) for e in examples]}


def _run_side(side: str, work_file: Path) -> SideResult:
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--work", str(work_file)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return SideResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_report(work: dict, args: argparse.Namespace, ours: SideResult, plain: SideResult,
                 load: tuple[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    lengths = [len(ids) for ids, _ in work["encoded"]]
    answers = sum(sum(label != -100 for label in labels) for _, labels in work["encoded"])
    console = Console(width=150)
    console.print(f"model {work['model_dir']} ({ours.params / 1e6:.1f}M params), mode {args.mode}, "
                  f"{len(lengths)} examples (mean {sum(lengths) / len(lengths):.0f} tokens, "
                  f"{answers / len(lengths):.1f} answer tokens), batch {work['finetune']['batch_size']}, "
                  f"{work['steps']} steps, LoRA r={work['finetune']['lora']['r']}, {work['threads']} threads")
    table = Table(title="LoRA training: ragtune loop vs plain Trainer + peft")
    for column in ("side", "steps", "real tokens", "pad share", "seconds", "tokens/s", "GFLOP/s",
                   "mean loss", "RSS before step MiB", "step peak RSS MiB"):
        table.add_column(column, justify="right")
    for r in (ours, plain):
        table.add_row(r.side, str(r.steps), str(r.real_tokens), f"{1 - r.real_tokens / r.padded_tokens:.1%}",
                      f"{r.seconds:.1f}", f"{r.tokens_per_second:.0f}", f"{r.gflops:.1f}", f"{r.mean_loss:.3f}",
                      f"{r.rss_before_mib:.0f}", f"{r.step_peak_rss_mib:.0f}")
    console.print(table)
    console.print(f"tokens/s ours/plain: {ours.tokens_per_second / plain.tokens_per_second:.2f}x   "
                  f"GFLOP/s ours/plain: {ours.gflops / plain.gflops:.2f}x   "
                  f"step peak RSS plain/ours: {plain.step_peak_rss_mib / ours.step_peak_rss_mib:.2f}x "
                  f"(one forward+backward on the same {len(_longest(work))} longest examples, read via "
                  f"{ours.peak_method})")
    console.print("GFLOP/s = 6 * N * real tokens / seconds (2N forward + 4N backward per token, "
                  f"N = {ours.params:,} base-model parameters)")
    console.print(f"load average (1/5/15 min) before: {load[0]}  after: {load[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"),
                        help="Pipeline config: base model, data, LoRA and optimizer settings.")
    parser.add_argument("--model-dir", help="Local model directory (default: the config's base model, cached).")
    parser.add_argument("--mode", choices=("raft", "closed_book"), default="raft")
    parser.add_argument("--steps", type=int, default=6, help="Timed optimizer steps per side.")
    parser.add_argument("--examples", type=int, default=48,
                        help="Training questions (48 = one epoch of 6 steps at batch 8).")
    parser.add_argument("--batch-size", type=int, help="Default: finetune.batch_size of the config.")
    parser.add_argument("--threads", type=int, help="torch threads per side (default: finetune.threads or all cores).")
    parser.add_argument("--side", choices=("ours", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        work = json.loads(args.work.read_text())
        result = run_ours(work) if args.side == "ours" else run_plain(work)
        print(json.dumps(result.__dict__))
        return
    work = prepare_work(args)
    load_before = _load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work_file = Path(tmp) / "work.json"
        work_file.write_text(json.dumps(work))
        ours = _run_side("ours", work_file)
        plain = _run_side("plain", work_file)
    print_report(work, args, ours, plain, (load_before, _load_average()))


if __name__ == "__main__":
    main()
