"""Index stage: chunk documents, embed them, build a FAISS inner-product index, swap it in atomically.

Layout under `IndexConfig.root`:
    <version>/index.faiss, chunks.parquet, manifest.json   one directory per index version
    CURRENT                                                 the served version (replaced atomically)
A version directory is built under a temporary name and renamed only when complete, so a
reader following CURRENT never sees a half-written index.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.metrics import retrieval_scores
from tasks.models import embedding_model_dir
from tasks.settings import IndexConfig

CURRENT = "CURRENT"


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    text: str
    score: float


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Split into windows of about `size` characters, `overlap` shared, cut at whitespace where possible."""
    text = " ".join(text.split())
    if len(text) <= size:
        return [text]
    chunks, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + size // 2, end)
            end = cut if cut > start else end
        chunks.append(text[start:end].strip())
        if end >= len(text):
            break
        nxt = end - overlap
        space = text.find(" ", nxt, end)
        start = space + 1 if space != -1 else nxt
    return [c for c in chunks if c]


def chunk_documents(documents: pd.DataFrame, cfg: IndexConfig) -> pd.DataFrame:
    rows = []
    for doc_id, title, text in zip(documents["doc_id"], documents["title"], documents["text"], strict=True):
        for i, chunk in enumerate(chunk_text(text, cfg.chunk_chars, cfg.chunk_overlap)):
            rows.append({"chunk_id": f"{doc_id}#{i}", "doc_id": doc_id, "title": title, "text": chunk})
    return pd.DataFrame(rows, columns=["chunk_id", "doc_id", "title", "text"])


@lru_cache(maxsize=2)
def load_embedder(model_dir: str):
    """One SentenceTransformer per process and model directory."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def embed(texts: list[str], cfg: IndexConfig, show_progress: bool = False) -> np.ndarray:
    model = load_embedder(str(embedding_model_dir(cfg)))
    vectors = model.encode(
        texts, batch_size=cfg.embed_batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def index_version(fingerprint: str, cfg: IndexConfig) -> str:
    params = json.dumps({"fp": fingerprint, "model": str(embedding_model_dir(cfg).resolve()),
                         "size": cfg.chunk_chars, "overlap": cfg.chunk_overlap}, sort_keys=True)
    return f"idx-{hashlib.sha256(params.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class IndexBuild:
    version: str
    path: Path
    num_chunks: int
    reused: bool
    seconds: float


def _write_pointer(root: Path, version: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".CURRENT-")
    with os.fdopen(fd, "w") as fh:
        fh.write(version)
    os.replace(tmp, root / CURRENT)


def build_index(documents: pd.DataFrame, fingerprint: str, cfg: IndexConfig) -> IndexBuild:
    """Build (or reuse, when data and chunking are unchanged) the index and make it CURRENT."""
    import faiss

    start = time.perf_counter()
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    version = index_version(fingerprint, cfg)
    final = root / version
    if (final / "manifest.json").is_file():
        _write_pointer(root, version)
        manifest = json.loads((final / "manifest.json").read_text())
        return IndexBuild(version, final, manifest["num_chunks"], True, time.perf_counter() - start)

    chunks = chunk_documents(documents, cfg)
    vectors = embed(chunks["text"].tolist(), cfg, show_progress=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        faiss.write_index(index, str(staging / "index.faiss"))
        chunks.to_parquet(staging / "chunks.parquet", index=False)
        manifest = {
            "version": version, "data_fingerprint": fingerprint, "embedding_model": str(embedding_model_dir(cfg)),
            "chunk_chars": cfg.chunk_chars, "chunk_overlap": cfg.chunk_overlap, "faiss_type": "IndexFlatIP",
            "dim": int(vectors.shape[1]), "num_chunks": len(chunks), "num_documents": int(documents.shape[0]),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_pointer(root, version)
    return IndexBuild(version, final, len(chunks), False, time.perf_counter() - start)


def current_index_dir(cfg: IndexConfig) -> Path:
    pointer = Path(cfg.root) / CURRENT
    if not pointer.is_file():
        raise FileNotFoundError(f"no index built yet under {cfg.root} (run `ragtune index`)")
    return Path(cfg.root) / pointer.read_text().strip()


class Retriever:
    """Top-k search over one index version; the embedding model is shared per process."""

    def __init__(self, index_dir: Path, cfg: IndexConfig):
        import faiss

        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        self.chunks = pd.read_parquet(self.index_dir / "chunks.parquet")
        self.manifest = json.loads((self.index_dir / "manifest.json").read_text())

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def search(self, queries: list[str], k: int | None = None) -> list[list[Hit]]:
        k = min(k or self.cfg.top_k, self.index.ntotal)
        scores, ids = self.index.search(embed(queries, self.cfg), k)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            hits = []
            for score, idx in zip(row_scores, row_ids, strict=True):
                if idx < 0:
                    continue
                chunk = self.chunks.iloc[int(idx)]
                hits.append(Hit(chunk["chunk_id"], chunk["doc_id"], chunk["text"], float(score)))
            results.append(hits)
        return results


def evaluate_retrieval(retriever: Retriever, qa: pd.DataFrame, k: int) -> dict[str, float]:
    """Mean recall@k, precision@k and MRR of the gold document over a QA table."""
    hits = retriever.search(qa["question"].tolist(), k)
    per_q = [retrieval_scores([h.doc_id for h in row], gold, k) for row, gold in zip(hits, qa["doc_id"], strict=True)]
    return {name: float(np.mean([s[name] for s in per_q])) if per_q else 0.0
            for name in ("recall_at_k", "precision_at_k", "mrr")}
