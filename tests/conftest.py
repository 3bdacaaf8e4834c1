"""Test setup: offline switches before any library import, and tiny models built from a config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.offline import enable_offline_mode

enable_offline_mode()
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own stores, never a developer's server

ROOT = Path(__file__).resolve().parent.parent
NETGUARD = Path(__file__).resolve().parent / "netguard"
XQUAD = ROOT.parent / "shared" / "datasets" / "xquad_en" / "xquad.en.json"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TOY_TEXT = [
    "The Kellsport office opens at 8 am.", "The TideWatch T4 buoy weighs 212 kg.",
    "Question: When does the Kellsport office open?", "Answer with the passages below.",
    "system user assistant passages question answer", "0 1 2 3 4 5 6 7 8 9 kg am pm",
]


def pytest_configure(config) -> None:
    """The network guard (tests/netguard): here, and in every Python process a test starts."""
    import importlib.util
    import tempfile

    log = Path(tempfile.mkdtemp(prefix="ragtune-netguard-")) / "attempts.log"
    log.touch()
    os.environ["RAGTUNE_NETGUARD_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    spec = importlib.util.spec_from_file_location("ragtune_netguard", NETGUARD / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session if any process tried to reach beyond loopback, even where the code swallowed the error."""
    attempts = Path(os.environ["RAGTUNE_NETGUARD_LOG"]).read_text().strip()
    if attempts:
        print(f"\nnetwork guard: non-loopback network attempts during the tests:\n{attempts}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Llama with a BPE tokenizer trained on toy text, saved like a real checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    raw.train_from_iterator(TOY_TEXT * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<|end|>",
                                        pad_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.3,  # large enough init that LoRA can move the logits
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
