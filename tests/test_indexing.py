import json

import numpy as np
import pandas as pd
import pytest

from tasks import indexing, retrieval
from tasks.chunking import chunk_documents, paragraph_spans, token_windows
from tasks.index_settings import ChunkingConfig, FaissConfig, IndexConfig
from tasks.models import embedding_model_dir, weights_key

DOCS = pd.DataFrame({
    "doc_id": ["d1", "d2", "d3"],
    "title": ["Buoy", "Office", "Warranty"],
    "text": ["The TideWatch T4 buoy weighs 212 kg and floats in Kellsport harbour. " * 6,
             "The Kellsport office opens at 8 am on weekdays and closes at 5 pm.",
             "Every buoy carries a warranty of 36 months from the delivery date."],
})


def _cfg(tmp_path, **kw) -> IndexConfig:
    kw.setdefault("chunking", ChunkingConfig(strategy="tokens", max_tokens=32, overlap_tokens=8))
    return IndexConfig(root=tmp_path / "index", top_k=2, **kw)


@pytest.fixture(scope="module")
def tokenizer():
    return retrieval.load_embedder(str(embedding_model_dir(IndexConfig()))).tokenizer


@pytest.fixture
def embed_calls(monkeypatch):
    """Every text actually sent to the embedding model."""
    calls: list[str] = []
    real = indexing.embed

    def counting(texts, cfg, show_progress=False):
        calls.extend(texts)
        return real(texts, cfg, show_progress)

    monkeypatch.setattr(indexing, "embed", counting)
    return calls


def test_token_windows_fit_overlap_and_end_on_words(tokenizer):
    text = " ".join(f"alpha{i} beta{i}" for i in range(80))
    spans = token_windows(text, tokenizer, 24, 6)
    assert len(spans) > 3
    for start, end in spans:
        piece = text[start:end]
        assert len(tokenizer(piece, add_special_tokens=False)["input_ids"]) <= 24
        assert (start == 0 or text[start - 1] == " ") and (end == len(text) or text[end] == " ")
    for (_, prev_end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert next_start < prev_end  # consecutive windows overlap
    assert spans[-1][1] == len(text)


def test_paragraph_chunks_merge_short_and_split_long(tokenizer):
    long = " ".join(f"word{i}" for i in range(120))
    text = f"Short one.\n\nShort two.\n\n{long}\n\nTail."
    spans = paragraph_spans(text, tokenizer, 40, 8)
    pieces = [text[s:e] for s, e in spans]
    assert pieces[0] == "Short one.\n\nShort two."
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 40 for p in pieces)
    assert pieces[-1] == "Tail."
    assert any("word119" in p for p in pieces)


def test_chunks_trace_back_to_their_document(tokenizer):
    chunks = chunk_documents(DOCS, ChunkingConfig(strategy="tokens", max_tokens=32, overlap_tokens=8), tokenizer)
    by_id = DOCS.set_index("doc_id")["text"]
    for row in chunks.itertuples():
        assert row.chunk_id.startswith(f"{row.doc_id}#")
        assert " ".join(by_id[row.doc_id][row.start:row.end].split()) == row.text
    assert chunks["chunk_id"].is_unique and (chunks["doc_id"] == "d1").sum() > 1


def test_build_search_and_manifest_matches_fingerprint(tmp_path):
    cfg = _cfg(tmp_path)
    build = indexing.build_index(DOCS, "fp1", cfg)
    assert not build.reused and build.num_chunks >= 4 and build.embedded == build.num_chunks
    assert indexing.current_index_dir(cfg) == build.path
    retriever = retrieval.Retriever(build.path, cfg)
    hits = retriever.search(["When does the office open?"], 2)[0]
    assert hits[0].doc_id == "d2"
    manifest = json.loads((build.path / "manifest.json").read_text())
    assert manifest["documents_fingerprint"] == "fp1" and manifest["version"] == build.version
    assert manifest["num_chunks"] == retriever.index.ntotal == len(pd.read_parquet(build.path / "chunks.parquet"))
    assert manifest["faiss"]["type"] == "flat" and manifest["chunking"]["max_tokens"] == 32
    assert manifest["embedding_model_key"] == weights_key(str(embedding_model_dir(cfg)))


def test_no_change_rebuild_embeds_nothing(tmp_path, embed_calls):
    cfg = _cfg(tmp_path)
    first = indexing.build_index(DOCS, "fp1", cfg)
    embed_calls.clear()
    again = indexing.build_index(DOCS, "fp1", cfg)
    assert again.reused and again.version == first.version and embed_calls == []
    assert again.embedded == 0 and again.reused_vectors == first.num_chunks
    # New QA under the same documents: a new version (its manifest names the new fingerprint), zero embeddings.
    qa_changed = indexing.build_index(DOCS, "fp2", cfg)
    assert qa_changed.version != first.version and not qa_changed.reused
    assert embed_calls == [] and qa_changed.embedded == 0 and qa_changed.reused_vectors == first.num_chunks
    old = np.load(first.path / "vectors.npy")
    assert np.array_equal(np.load(qa_changed.path / "vectors.npy"), old)


def test_changed_document_replaces_its_chunks(tmp_path, embed_calls):
    cfg = _cfg(tmp_path)
    first = indexing.build_index(DOCS, "fp1", cfg)
    old_d2 = set(pd.read_parquet(first.path / "chunks.parquet").query("doc_id == 'd2'")["text"])
    changed = DOCS.copy()
    changed.loc[changed.doc_id == "d2", "text"] = "The Kellsport office moved: it now opens at 9 am on weekdays."
    changed = changed[changed.doc_id != "d3"]  # and d3 is deleted
    embed_calls.clear()
    second = indexing.build_index(changed, "fp2", cfg)
    chunks = pd.read_parquet(second.path / "chunks.parquet")
    assert not set(chunks["text"]) & old_d2
    assert "d3" not in set(chunks["doc_id"])
    assert embed_calls == chunks.query("doc_id == 'd2'")["text"].tolist()
    assert second.embedded == 1 and second.removed == 2
    hit = retrieval.Retriever(second.path, cfg).search(["When does the office open?"], 1)[0][0]
    assert hit.doc_id == "d2" and "9 am" in hit.text


def test_crash_mid_build_keeps_previous_version(tmp_path, monkeypatch):
    import faiss

    cfg = _cfg(tmp_path)
    first = indexing.build_index(DOCS, "fp1", cfg)
    before = {f: (first.path / f).read_bytes() for f in indexing.FILES}

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        indexing.build_index(DOCS.iloc[:2], "fp2", cfg)
    assert indexing.current_index_dir(cfg) == first.path
    visible = sorted(p.name for p in (tmp_path / "index").iterdir() if not p.name.startswith("."))
    assert visible == sorted([first.version, "CURRENT"])
    assert {f: (first.path / f).read_bytes() for f in indexing.FILES} == before
    assert retrieval.Retriever(first.path, cfg).search(["office hours"], 1)[0][0].doc_id == "d2"


def test_leftovers_of_a_killed_build_are_cleared(tmp_path):
    cfg = _cfg(tmp_path)
    stale = tmp_path / "index" / ".idx-deadbeef-xyz"
    stale.mkdir(parents=True)
    (stale / "index.faiss").write_bytes(b"half")
    indexing.build_index(DOCS, "fp1", cfg)
    assert not stale.exists()


def test_old_versions_are_pruned_by_retention(tmp_path):
    cfg = _cfg(tmp_path, keep_versions=2)
    builds = [indexing.build_index(DOCS, f"fp{i}", cfg) for i in range(4)]
    kept = {row["version"] for row in indexing.index_status(cfg)}
    assert kept == {builds[3].version, builds[2].version}
    assert [row["current"] for row in indexing.index_status(cfg)] == [True, False]
    # Going back to an older data state re-activates nothing pruned: it rebuilds without embedding.
    back = indexing.build_index(DOCS, "fp0", cfg)
    assert not back.reused and back.embedded == 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall_is_measured(tmp_path, kind):
    cfg = _cfg(tmp_path, faiss=FaissConfig(type=kind, recall_k=2))
    build = indexing.build_index(DOCS, "fp1", cfg, recall_queries=["office hours", "buoy weight", "warranty"])
    assert build.faiss_type == kind and build.ann_recall == pytest.approx(1.0)
    manifest = json.loads((build.path / "manifest.json").read_text())
    assert manifest["faiss"]["type"] == kind and manifest["ann_recall_at_k"] == build.ann_recall
    assert retrieval.Retriever(build.path, cfg).search(["How long is the warranty?"], 1)[0][0].doc_id == "d3"


def test_auto_type_switches_at_the_configured_size():
    from tasks.vector_index import choose_type

    cfg = FaissConfig(approximate_above=1000)
    assert choose_type(999, cfg) == "flat" and choose_type(1000, cfg) == "hnsw"
    assert choose_type(10, FaissConfig(type="ivf")) == "ivf"


def test_recall_vs_exact_detects_a_poor_index():
    import faiss

    from tasks.vector_index import recall_vs_exact

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
    coarse = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, 64, faiss.METRIC_INNER_PRODUCT)
    coarse.train(vectors)
    coarse.add(vectors)
    coarse.nprobe = 1
    exact = faiss.IndexFlatIP(32)
    exact.add(vectors)
    assert recall_vs_exact(exact, vectors, queries, 10) == 1.0
    assert recall_vs_exact(coarse, vectors, queries, 10) < 0.9


def test_chunks_longer_than_the_model_accepts_are_refused(tmp_path):
    cfg = _cfg(tmp_path, chunking=ChunkingConfig(max_tokens=1000, overlap_tokens=10))
    with pytest.raises(indexing.IndexBuildError, match="index.chunking.max_tokens=1000"):
        indexing.build_index(DOCS, "fp1", cfg)
    assert not (tmp_path / "index" / "CURRENT").exists()


def test_retrieval_evaluation_at_several_k(tmp_path):
    cfg = _cfg(tmp_path)
    retriever = retrieval.Retriever(indexing.build_index(DOCS, "fp1", cfg).path, cfg)
    qa = pd.DataFrame({"question": ["How long is the buoy warranty?", "How heavy is the T4 buoy?"],
                       "doc_id": ["d3", "d1"]})
    scores = retrieval.evaluate_retrieval(retriever, qa, [1, 3])
    assert scores["recall_at_1"] == 1.0 and scores["mrr_at_1"] == 1.0 and scores["ndcg_at_3"] == 1.0
    assert set(scores) == {f"{m}_at_{k}" for m in retrieval.RETRIEVAL_METRICS for k in (1, 3)}


def test_embedding_model_is_loaded_once_per_process(tmp_path):
    cfg = _cfg(tmp_path)
    indexing.build_index(DOCS, "fp1", cfg)
    loads = retrieval.load_embedder.cache_info().misses
    retrieval.Retriever(indexing.current_index_dir(cfg), cfg).search(["warranty"])
    indexing.build_index(DOCS, "fp2", cfg)
    assert retrieval.load_embedder.cache_info().misses == loads
