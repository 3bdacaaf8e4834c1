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
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.artifact_store import ArtifactStore
from tasks.atomic import atomic_directory, atomic_write_text, clear_staging
from tasks.chunking import chunk_documents
from tasks.data_loading import fingerprint_documents, fingerprint_qa
from tasks.errors import MissingArtifactError, UserError
from tasks.exclusive import exclusive, lock_name
from tasks.index_settings import IndexConfig
from tasks.models import embedding_model_dir, weights_key
from tasks.records import RunRecord
from tasks.reranking import reranker_identity
from tasks.retrieval import Retriever, embed, embedder, evaluate_retrieval, faiss_type
from tasks.stage_cache import StageCache, stage_key
from tasks.vector_index import FLAT, build_faiss, choose_type, recall_vs_exact

CURRENT = "CURRENT"
VARIANTS = ("dense", "lexical", "hybrid")  # search modes (without reranking) whose validation recall every run logs
FILES = ("index.faiss", "chunks.parquet", "vectors.npy", "manifest.json")


class IndexBuildError(UserError, RuntimeError):
    """The index cannot be built with this configuration (the message names the key)."""


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
    fetched: bool = False  # taken from the shared artifact store, not built here
    waited_s: float = 0.0  # for another run building the same version


def _check_chunk_length(cfg: IndexConfig) -> None:
    model = embedder(cfg)
    limit = model.max_seq_length - 2  # [CLS] and [SEP]
    if cfg.chunking.max_tokens > limit:
        raise IndexBuildError(f"index.chunking.max_tokens={cfg.chunking.max_tokens} exceeds the embedding model's "
                          f"limit of {limit} tokens: longer chunks would be truncated silently")


def index_version(fingerprint: str, cfg: IndexConfig) -> str:
    params = json.dumps({"fp": fingerprint, "model": weights_key(str(embedding_model_dir(cfg))),
                         "chunking": cfg.chunking.model_dump(), "faiss": cfg.faiss.model_dump()}, sort_keys=True)
    return f"idx-{hashlib.sha256(params.encode()).hexdigest()[:12]}"


def _write_pointer(root: Path, version: str) -> None:
    atomic_write_text(root / CURRENT, version)


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on the index root; leftovers of a killed build are removed under it."""
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        clear_staging(root, "idx-")
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
        raise MissingArtifactError(f"no index built yet under {cfg.root} (run `ragtune index build`)")
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
                recall_queries: Sequence[str] | None = None, store: ArtifactStore | None = None) -> IndexBuild:
    """Build (incrementally), reuse or fetch the index of `documents` and make it CURRENT.

    `recall_queries` (e.g. validation questions) measure an approximate index against exact search.
    A version is built once across machines: under its lock, from the shared `store` if it has it,
    and published there when built here.
    """
    start = time.perf_counter()
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    model_dir = str(embedding_model_dir(cfg))
    version = index_version(fingerprint, cfg)
    final = root / version
    with exclusive(lock_name("index", version), root / ".locks") as waited, _build_lock(root):
        fetched = (not (final / "manifest.json").is_file() and store is not None
                   and store.fetch("index", version, final))
        if (final / "manifest.json").is_file():
            manifest = json.loads((final / "manifest.json").read_text())
            os.utime(final)
            _write_pointer(root, version)
            _prune(root, cfg.keep_versions)
            if store is not None:
                store.publish("index", version, final)  # built before the store was configured
            return IndexBuild(version, final, manifest["num_chunks"], True, time.perf_counter() - start,
                              reused_vectors=manifest["num_chunks"], faiss_type=faiss_type(manifest),
                              ann_recall=manifest.get("ann_recall_at_k"), fetched=fetched, waited_s=waited)

        _check_chunk_length(cfg)
        chunks = chunk_documents(documents, cfg.chunking, embedder(cfg).tokenizer)
        if chunks.empty:
            raise IndexBuildError("no chunks: every document is empty")
        stored = _stored_vectors(root, weights_key(model_dir))
        vectors, embedded = _assemble_vectors(chunks, stored, cfg)
        kind = choose_type(len(vectors), cfg.faiss)
        index = build_faiss(vectors, kind, cfg.faiss)
        ann_recall = None
        if kind != FLAT and recall_queries:
            queries = embed(list(recall_queries)[: cfg.faiss.recall_queries], cfg)
            ann_recall = recall_vs_exact(index, vectors, queries, cfg.faiss.recall_k)
        manifest = {
            "version": version, "documents_fingerprint": fingerprint, "embedding_model": model_dir,
            "embedding_model_key": weights_key(model_dir), "chunking": cfg.chunking.model_dump(),
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
        if store is not None:
            store.publish("index", version, final)
    return IndexBuild(version, final, len(chunks), False, time.perf_counter() - start, embedded,
                      manifest["reused_vectors"], manifest["removed"], kind, ann_recall, waited_s=waited)


def _write_version(root: Path, version: str, index, chunks: pd.DataFrame, vectors: np.ndarray,
                   manifest: dict) -> None:
    import faiss

    with atomic_directory(root / version) as staging:
        faiss.write_index(index, str(staging / "index.faiss"))
        chunks.to_parquet(staging / "chunks.parquet", index=False)
        np.save(staging / "vectors.npy", vectors)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))


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
                     "docs_fingerprint": m.get("documents_fingerprint", m.get("data_fingerprint")),
                     "faiss_type": faiss_type(m),
                     "chunking": f"{chunking['strategy']}/{chunking['max_tokens']}",
                     "num_documents": m["num_documents"], "num_chunks": m["num_chunks"],
                     "embedded": m.get("embedded", m["num_chunks"]), "size_mb": round(size / 2**20, 2)})
    return rows




@dataclass(frozen=True)
class IndexReport:
    """The index stage's outcome: the build and its retrieval quality on validation and test questions."""

    build: IndexBuild
    quality: dict[str, float]  # val_recall_at_3, test_mrr_at_5, ... for every k in eval_k and top_k
    manifest: dict
    variants: dict[str, float] = field(default_factory=dict)  # val_dense_recall_at_3, val_hybrid_mrr, ...


def refresh_index(documents: pd.DataFrame, cfg: IndexConfig, validation_qa: pd.DataFrame, test_qa: pd.DataFrame,
                  cache_root: Path, store: ArtifactStore | None = None) -> IndexReport:
    """The index stage: build or reuse the index of the documents (made CURRENT; keyed by the documents alone,
    so a QA edit keeps it), then measure retrieval of the gold documents (reused when this index version was
    measured on the same questions before)."""
    build = build_index(documents, fingerprint_documents(documents), cfg,
                        recall_queries=validation_qa["question"].tolist(), store=store)
    ks = sorted({*cfg.eval_k, cfg.top_k})
    cache = StageCache(cache_root, "retrieval")
    key = stage_key(index=build.version, search=cfg.model_dump(mode="json", exclude={"root"}), ks=ks,
                    validation=fingerprint_qa(validation_qa), test=fingerprint_qa(test_qa), variants=VARIANTS,
                    **reranker_identity(cfg))
    if (measured := cache.get(key)) is None:
        retriever = Retriever(build.path, cfg)
        measured = {
            "quality": {f"{prefix}_{name}": value
                        for prefix, qa in (("val", validation_qa), ("test", test_qa))
                        for name, value in evaluate_retrieval(retriever, qa, ks).items()},
            "variants": {f"val_{mode}_{name}": value for mode in VARIANTS
                         for name, value in evaluate_retrieval(retriever, validation_qa, ks, mode, rerank=False).items()
                         if name.startswith(("recall", "mrr"))},
        }
        cache.put(key, measured)
    return IndexReport(build, measured["quality"], json.loads((build.path / "manifest.json").read_text()),
                       measured["variants"])


def index_record(report: IndexReport, cfg: IndexConfig, fingerprint: str) -> RunRecord:
    build = report.build
    counts = {"num_chunks": build.num_chunks, "embedded_chunks": build.embedded,
              "reused_vectors": build.reused_vectors, "removed_chunks": build.removed, "build_seconds": build.seconds}
    if build.ann_recall is not None:
        counts[f"ann_recall_at_{cfg.faiss.recall_k}"] = build.ann_recall
    return RunRecord(
        tags={"index_version": build.version, "data_fingerprint": fingerprint, "reused": str(build.reused),
              "fetched": str(build.fetched),
              "faiss_type": build.faiss_type},
        params={"chunking": cfg.chunking.strategy, "max_tokens": cfg.chunking.max_tokens,
                "overlap_tokens": cfg.chunking.overlap_tokens, "faiss_type": build.faiss_type, "top_k": cfg.top_k,
                "retrieval": cfg.retrieval.mode, **({"reranker": str(cfg.retrieval.rerank.path)}
                                                     if cfg.retrieval.rerank else {}),
                "embedding_model": report.manifest["embedding_model"]},
        metrics={**report.quality, **report.variants, **counts},
        dicts={"index/manifest.json": report.manifest},
    )


def index_summary(report: IndexReport, cfg: IndexConfig) -> str:
    build, k, nan = report.build, cfg.top_k, float("nan")
    how = "fetched from the shared store" if build.fetched else "reused" if build.reused else "built"
    waited = f", after waiting {build.waited_s:.0f} s for another run" if build.waited_s >= 1 else ""
    return (f"index {build.version} ({how}{waited}, {build.faiss_type}): "
            f"{build.num_chunks} chunks, {build.embedded} embedded, {build.reused_vectors} reused, "
            f"{build.removed} removed; validation recall@{k} {report.quality.get(f'val_recall_at_{k}', nan):.3f}, "
            f"ndcg@{k} {report.quality.get(f'val_ndcg_at_{k}', nan):.3f} ({cfg.retrieval.mode}"
            f"{' reranked' if cfg.retrieval.rerank else ''}; "
            + ", ".join(f"{mode} {report.variants.get(f'val_{mode}_recall_at_{k}', nan):.3f}" for mode in VARIANTS)
            + (" without reranking" if cfg.retrieval.rerank else "") + ")")
