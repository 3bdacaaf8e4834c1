import importlib
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tasks import models
from tasks.models import ModelSourceError, resolve_model_dir
from tasks.prompts import render_prompt
from tasks.settings import ModelSource

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question: x"}]


@pytest.fixture
def conversions(monkeypatch) -> list[tuple[Path, str, Path]]:
    """Records GGUF conversions instead of dequantising (the real one needs a real GGUF model)."""
    calls: list[tuple[Path, str, Path]] = []

    def fake_convert(directory: Path, gguf_file: str, target: Path) -> None:
        calls.append((Path(directory), gguf_file, Path(target)))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    return calls


def _package(root: Path, name: str, source: str, files: dict[str, bytes] | None = None) -> None:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(source)
    for file, data in (files or {}).items():
        (pkg / file).write_bytes(data)


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.startswith("fake_model_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_local_directory_is_used_as_is(tiny_model_dir, tmp_path):
    assert resolve_model_dir(ModelSource(path=tiny_model_dir), tmp_path) == tiny_model_dir
    with pytest.raises(ModelSourceError, match="not a directory"):
        resolve_model_dir(ModelSource(path=tmp_path / "missing"), tmp_path)


def test_packaged_gguf_is_converted_once_per_file_hash(site, tmp_path, conversions):
    _package(site, "fake_model_pkg", "", {"m.gguf": b"weights v1"})
    source = ModelSource(package="fake_model_pkg", gguf_file="m.gguf")
    first = resolve_model_dir(source, tmp_path / "cache")
    assert resolve_model_dir(source, tmp_path / "cache") == first
    assert len(conversions) == 1 and conversions[0][0] == site / "fake_model_pkg"
    (site / "fake_model_pkg" / "m.gguf").write_bytes(b"weights v2")
    second = resolve_model_dir(source, tmp_path / "cache")
    assert second != first and len(conversions) == 2
    assert Path(first).name.startswith("m-") and Path(first).parent == tmp_path / "cache"


def test_gguf_in_a_local_directory_is_converted(tmp_path, conversions):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "m.gguf").write_bytes(b"weights")
    out = resolve_model_dir(ModelSource(path=tmp_path / "ckpt", gguf_file="m.gguf"), tmp_path / "cache")
    assert conversions == [(tmp_path / "ckpt", "m.gguf", Path(out))]


def test_assembled_package_writes_its_gguf_once_into_the_cache(site, tmp_path, conversions):
    counter = tmp_path / "assembled"
    _package(site, "fake_model_chunks", f"""
from pathlib import Path

def assemble(output_path, overwrite=False):
    counter = Path({str(counter)!r})
    counter.write_text(str(int(counter.read_text() or 0) + 1) if counter.exists() else "1")
    Path(output_path).write_bytes(b"part0" + b"part1")
    return Path(output_path)
""")
    source = ModelSource(package="fake_model_chunks", assemble=True, gguf_file="big.gguf")
    first = resolve_model_dir(source, tmp_path / "cache")
    assert resolve_model_dir(source, tmp_path / "cache") == first
    assert counter.read_text() == "1" and len(conversions) == 1
    gguf = tmp_path / "cache" / "gguf" / "fake_model_chunks" / "big.gguf"
    assert gguf.read_bytes() == b"part0part1"
    assert conversions[0][:2] == (gguf.parent, "big.gguf")
    assert not list(gguf.parent.glob(".*part"))  # the staging file was renamed, not left behind


def test_assemble_without_its_chunk_packages_is_a_clear_error(site, tmp_path, conversions):
    _package(site, "fake_model_nochunks", """
def assemble(output_path, overwrite=False):
    import fake_model_missing_part1  # noqa: F401
""")
    source = ModelSource(package="fake_model_nochunks", assemble=True, gguf_file="big.gguf")
    with pytest.raises(ModelSourceError, match="chunk packages"):
        resolve_model_dir(source, tmp_path / "cache")
    assert not conversions and not (tmp_path / "cache" / "gguf" / "fake_model_nochunks" / "big.gguf").exists()


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_model_dir(ModelSource(package="fake_model_absent", gguf_file="m.gguf"), tmp_path)


def test_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE=1.*base_model.path"):
        resolve_model_dir(ModelSource(hub_id="ragtune-tests/not-in-any-cache"), tmp_path)


@pytest.mark.parametrize("fields, message", [
    ({"path": "x", "assemble": True}, "assemble needs a package"),
    ({"hub_id": "a/b", "gguf_file": "m.gguf"}, "not hub_id"),
    ({"package": "p"}, "need gguf_file"),
    ({"package": "p", "gguf_file": "m.gguf", "path": "x"}, "exactly one"),
])
def test_model_source_rejects_ambiguous_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelSource(**fields)


class _PlainTokenizer:
    """A tokenizer without a chat template, adding BOS by default or not."""

    chat_template = None
    bos_token, bos_token_id = "<s>", 1

    def __init__(self, adds_bos: bool):
        self.adds_bos = adds_bos

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": ([1] if self.adds_bos else []) + [7] * len(text.split())}


def test_plain_prompt_starts_with_bos_only_when_the_tokenizer_adds_one(tiny_model_dir):
    assert render_prompt(_PlainTokenizer(adds_bos=True), MESSAGES) == "<s>Be brief.\n\nQuestion: x\nAnswer:"
    assert render_prompt(_PlainTokenizer(adds_bos=False), MESSAGES) == "Be brief.\n\nQuestion: x\nAnswer:"
    chat = render_prompt(AutoTokenizer.from_pretrained(tiny_model_dir), MESSAGES)
    assert chat == "<|system|>Be brief.<|end|><|user|>Question: x<|end|><|assistant|>"
