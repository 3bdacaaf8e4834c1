import pandas as pd
import pytest

from tasks import indexing
from tasks.settings import IndexConfig

DOCS = pd.DataFrame({
    "doc_id": ["d1", "d2", "d3"],
    "title": ["Buoy", "Office", "Warranty"],
    "text": ["The TideWatch T4 buoy weighs 212 kg and floats in Kellsport harbour. " * 3,
             "The Kellsport office opens at 8 am on weekdays and closes at 5 pm.",
             "Every buoy carries a warranty of 36 months from the delivery date."],
})


def _cfg(tmp_path, **kw) -> IndexConfig:
    return IndexConfig(root=tmp_path / "index", chunk_chars=120, chunk_overlap=20, top_k=2, **kw)


def test_chunk_text_respects_size_and_overlap():
    text = " ".join(f"word{i}" for i in range(200))
    chunks = indexing.chunk_text(text, 100, 20)
    assert all(len(c) <= 100 for c in chunks)
    assert " ".join(chunks).count("word199") >= 1
    first_tail = chunks[0].split()[-1]
    assert first_tail in chunks[1]  # overlap carries the boundary word into the next chunk


def test_build_search_and_reuse(tmp_path):
    cfg = _cfg(tmp_path)
    build = indexing.build_index(DOCS, "fp1", cfg)
    assert not build.reused and build.num_chunks >= 3
    assert indexing.current_index_dir(cfg) == build.path
    retriever = indexing.Retriever(build.path, cfg)
    hits = retriever.search(["When does the office open?"], 2)[0]
    assert hits[0].doc_id == "d2"
    assert all(h.chunk_id.startswith(h.doc_id + "#") for h in hits)
    assert retriever.manifest["data_fingerprint"] == "fp1"
    again = indexing.build_index(DOCS, "fp1", cfg)
    assert again.reused and again.version == build.version


def test_crash_mid_build_keeps_previous_version(tmp_path, monkeypatch):
    import faiss

    cfg = _cfg(tmp_path)
    first = indexing.build_index(DOCS, "fp1", cfg)

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        indexing.build_index(DOCS.iloc[:2], "fp2", cfg)
    assert indexing.current_index_dir(cfg) == first.path
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == sorted([first.version, "CURRENT"])
    assert indexing.Retriever(first.path, cfg).index.ntotal == first.num_chunks


def test_retrieval_evaluation(tmp_path):
    cfg = _cfg(tmp_path)
    retriever = indexing.Retriever(indexing.build_index(DOCS, "fp1", cfg).path, cfg)
    qa = pd.DataFrame({"question": ["How long is the buoy warranty?", "How heavy is the T4 buoy?"],
                       "doc_id": ["d3", "d1"]})
    scores = indexing.evaluate_retrieval(retriever, qa, 2)
    assert scores["recall_at_k"] == 1.0 and scores["mrr"] == 1.0
