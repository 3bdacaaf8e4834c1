"""Index stage: chunk documents, embed only what changed, build a FAISS index, swap it in atomically.

Layout under `IndexConfig.root`:
    <version>/index.faiss, chunks.parquet, vectors.npy, manifest.json   one directory per version
    CURRENT                                                              the served version
A version is built under a temporary name and renamed only when complete, then CURRENT is
replaced atomically, so a reader following CURRENT never sees a half-written index. Builds take
a file lock, so a nightly refresh and a manual build never interleave.

Incremental rebuilds: every chunk carries a content hash. A new version reuses the stored
vectors of the current version for every chunk whose text is unchanged (same embedding model)
and embeds only new or changed chunks; chunks of deleted or changed documents are simply not
in the new table. The same data, model, chunking and FAISS settings give the same version id,
which is reused as is.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.chunking import chunk_documents
from tasks.metrics import retrieval_scores
from tasks.models import embedding_model_dir
from tasks.settings import IndexConfig
from tasks.vector_index import FLAT, build_faiss, choose_type, configure_search, recall_vs_exact

CURRENT = "CURRENT"
FILES = ("index.faiss", "chunks.parquet", "vectors.npy", "manifest.json")
RETRIEVAL_METRICS = ("recall", "precision", "mrr", "ndcg")


class IndexBuildError(RuntimeError):
    """The index cannot be built with this configuration (the message names the key)."""


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    text: str
    score: float


@dataclass(frozen=True)
class IndexBuild:
    version: str
    path: Path
    num_chunks: int
    reused: bool
    seconds: float
    embedded: int = 0
    reused_vectors: int = 0
    removed: int = 0
    faiss_type: str = FLAT
    ann_recall: float | None = None


@lru_cache(maxsize=4)
def load_embedder(model_dir: str, threads: int | None = None):
    """One SentenceTransformer per process and model directory."""
    from sentence_transformers import SentenceTransformer

    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    return SentenceTransformer(model_dir, device="cpu")


@lru_cache(maxsize=4)
def embedding_model_key(model_dir: str) -> str:
    """Identity of the embedding weights: stored vectors are reusable only under the same key."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).rglob("*")):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt"}:
            h.update(path.relative_to(model_dir).as_posix().encode())
            with path.open("rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _embedder(cfg: IndexConfig):
    return load_embedder(str(embedding_model_dir(cfg)), cfg.threads)


def embed(texts: list[str], cfg: IndexConfig, show_progress: bool = False) -> np.ndarray:
    vectors = _embedder(cfg).encode(
        texts, batch_size=cfg.embed_batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def _check_chunk_length(cfg: IndexConfig) -> None:
    model = _embedder(cfg)
    limit = model.max_seq_length - 2  # [CLS] and [SEP]
    if cfg.chunking.max_tokens > limit:
        raise IndexBuildError(f"index.chunking.max_tokens={cfg.chunking.max_tokens} exceeds the embedding model's "
                          f"limit of {limit} tokens: longer chunks would be truncated silently")


def index_version(fingerprint: str, cfg: IndexConfig) -> str:
    params = json.dumps({"fp": fingerprint, "model": embedding_model_key(str(embedding_model_dir(cfg))),
                         "chunking": cfg.chunking.model_dump(), "faiss": cfg.faiss.model_dump()}, sort_keys=True)
    return f"idx-{hashlib.sha256(params.encode()).hexdigest()[:12]}"


def _write_pointer(root: Path, version: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".CURRENT-")
    with os.fdopen(fd, "w") as fh:
        fh.write(version)
    os.replace(tmp, root / CURRENT)


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the index root; leftovers of a killed build are removed under it."""
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in root.glob(".idx-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob(".CURRENT-*"):
            stale.unlink(missing_ok=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def current_version(root: Path) -> str | None:
    pointer = Path(root) / CURRENT
    return pointer.read_text().strip() if pointer.is_file() else None


def current_index_dir(cfg: IndexConfig) -> Path:
    version = current_version(cfg.root)
    if version is None:
        raise FileNotFoundError(f"no index built yet under {cfg.root} (run `ragtune index build`)")
    return Path(cfg.root) / version


def _stored_vectors(root: Path, model_key: str) -> dict[str, np.ndarray]:
    """content hash -> vector from the current version, if it used the same embedding model."""
    version = current_version(root)
    if version is None or not (root / version / "manifest.json").is_file():
        return {}
    manifest = json.loads((root / version / "manifest.json").read_text())
    if manifest.get("embedding_model_key") != model_key:
        return {}
    hashes = pd.read_parquet(root / version / "chunks.parquet", columns=["content_hash"])["content_hash"]
    vectors = np.load(root / version / "vectors.npy", mmap_mode="r")
    return dict(zip(hashes.tolist(), vectors, strict=True))


def _assemble_vectors(chunks: pd.DataFrame, stored: dict[str, np.ndarray],
                      cfg: IndexConfig) -> tuple[np.ndarray, int]:
    """Vectors for every chunk (the table is not empty), embedding each distinct new text once;
    returns (vectors, embedded)."""
    missing = list(dict.fromkeys(h for h in chunks["content_hash"] if h not in stored))
    if missing:
        text_of = dict(zip(chunks["content_hash"], chunks["text"], strict=True))
        fresh = embed([text_of[h] for h in missing], cfg, show_progress=True)
        stored = {**stored, **dict(zip(missing, fresh, strict=True))}
    return np.ascontiguousarray(np.stack([stored[h] for h in chunks["content_hash"]]), dtype=np.float32), len(missing)


def build_index(documents: pd.DataFrame, fingerprint: str, cfg: IndexConfig,
                recall_queries: Sequence[str] | None = None) -> IndexBuild:
    """Build (incrementally) or reuse the index of `documents` and make it CURRENT.

    `recall_queries` (e.g. validation questions) measure an approximate index against exact search.
    """
    start = time.perf_counter()
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    model_dir = str(embedding_model_dir(cfg))
    version = index_version(fingerprint, cfg)
    final = root / version
    with _build_lock(root):
        if (final / "manifest.json").is_file():
            manifest = json.loads((final / "manifest.json").read_text())
            os.utime(final)
            _write_pointer(root, version)
            _prune(root, cfg.keep_versions)
            return IndexBuild(version, final, manifest["num_chunks"], True, time.perf_counter() - start,
                              reused_vectors=manifest["num_chunks"], faiss_type=_faiss_type(manifest),
                              ann_recall=manifest.get("ann_recall_at_k"))

        _check_chunk_length(cfg)
        chunks = chunk_documents(documents, cfg.chunking, _embedder(cfg).tokenizer)
        if chunks.empty:
            raise IndexBuildError("no chunks: every document is empty")
        stored = _stored_vectors(root, embedding_model_key(model_dir))
        vectors, embedded = _assemble_vectors(chunks, stored, cfg)
        kind = choose_type(len(vectors), cfg.faiss)
        index = build_faiss(vectors, kind, cfg.faiss)
        ann_recall = None
        if kind != FLAT and recall_queries:
            queries = embed(list(recall_queries)[: cfg.faiss.recall_queries], cfg)
            ann_recall = recall_vs_exact(index, vectors, queries, cfg.faiss.recall_k)
        manifest = {
            "version": version, "data_fingerprint": fingerprint, "embedding_model": model_dir,
            "embedding_model_key": embedding_model_key(model_dir), "chunking": cfg.chunking.model_dump(),
            "faiss": {"type": kind, **cfg.faiss.model_dump(exclude={"type"})},
            "dim": int(vectors.shape[1]), "num_chunks": len(chunks), "num_documents": int(documents.shape[0]),
            "embedded": embedded, "reused_vectors": int(chunks["content_hash"].isin(stored.keys()).sum()),
            "removed": len(set(stored) - set(chunks["content_hash"])),
            "ann_recall_at_k": ann_recall,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        _write_version(root, version, index, chunks, vectors, manifest)
        _write_pointer(root, version)
        _prune(root, cfg.keep_versions)
    return IndexBuild(version, final, len(chunks), False, time.perf_counter() - start, embedded,
                      manifest["reused_vectors"], manifest["removed"], kind, ann_recall)


def _write_version(root: Path, version: str, index, chunks: pd.DataFrame, vectors: np.ndarray,
                   manifest: dict) -> None:
    import faiss

    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        faiss.write_index(index, str(staging / "index.faiss"))
        chunks.to_parquet(staging / "chunks.parquet", index=False)
        np.save(staging / "vectors.npy", vectors)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        staging.rename(root / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _faiss_type(manifest: dict) -> str:
    """Versions written before the FAISS type was configurable are flat."""
    return manifest.get("faiss", {}).get("type", FLAT)


def _versions(root: Path) -> list[Path]:
    """Complete version directories, most recently built or activated first."""
    found = [p for p in root.glob("idx-*") if (p / "manifest.json").is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the current version and the `keep - 1` most recent others."""
    current = current_version(root)
    for path in [p for p in _versions(root) if p.name != current][keep - 1:]:
        shutil.rmtree(path, ignore_errors=True)


def index_status(cfg: IndexConfig) -> list[dict]:
    """One row per stored version (newest first): the manifest summary and whether it is served."""
    root = Path(cfg.root)
    if not root.is_dir():
        return []
    current = current_version(root)
    rows = []
    for path in _versions(root):
        m = json.loads((path / "manifest.json").read_text())
        size = sum(f.stat().st_size for f in path.iterdir())
        chunking = m.get("chunking", {"strategy": "chars", "max_tokens": m.get("chunk_chars")})
        rows.append({"version": m["version"], "current": m["version"] == current, "built_at": m["built_at"],
                     "data_fingerprint": m["data_fingerprint"], "faiss_type": _faiss_type(m),
                     "chunking": f"{chunking['strategy']}/{chunking['max_tokens']}",
                     "num_documents": m["num_documents"], "num_chunks": m["num_chunks"],
                     "embedded": m.get("embedded", m["num_chunks"]), "size_mb": round(size / 2**20, 2)})
    return rows


class Retriever:
    """Top-k search over one index version; the embedding model is shared per process."""

    def __init__(self, index_dir: Path, cfg: IndexConfig):
        import faiss

        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.manifest = json.loads((self.index_dir / "manifest.json").read_text())
        self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        configure_search(self.index, _faiss_type(self.manifest), cfg.faiss)
        chunks = pd.read_parquet(self.index_dir / "chunks.parquet", columns=["chunk_id", "doc_id", "text"])
        self._chunk_ids, self._doc_ids, self._texts = (chunks[c].tolist() for c in ("chunk_id", "doc_id", "text"))

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def chunk_table(self) -> pd.DataFrame:
        """Every chunk of this version (ids, text, span, content hash), in index order."""
        return pd.read_parquet(self.index_dir / "chunks.parquet")

    def search(self, queries: list[str], k: int | None = None) -> list[list[Hit]]:
        return self.search_vectors(embed(queries, self.cfg), k)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None) -> list[list[Hit]]:
        k = min(k or self.cfg.top_k, self.index.ntotal)
        scores, ids = self.index.search(vectors, k)
        return [[Hit(self._chunk_ids[i], self._doc_ids[i], self._texts[i], float(s))
                 for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
                for row_scores, row_ids in zip(scores, ids, strict=True)]


def evaluate_retrieval(retriever: Retriever, qa: pd.DataFrame, ks: Sequence[int]) -> dict[str, float]:
    """Mean recall/precision/mrr/ndcg of the gold document at each k: keys like `recall_at_5`."""
    if qa.empty:
        return {}
    hits = retriever.search(qa["question"].tolist(), max(ks))
    out = {}
    for k in ks:
        per_q = [retrieval_scores([h.doc_id for h in row], gold, k)
                 for row, gold in zip(hits, qa["doc_id"], strict=True)]
        for name in RETRIEVAL_METRICS:
            key = "mrr" if name == "mrr" else f"{name}_at_k"
            out[f"{name}_at_{k}"] = float(np.mean([s[key] for s in per_q]))
    return out
