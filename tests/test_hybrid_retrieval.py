"""Lexical (BM25) and hybrid (reciprocal rank fusion) retrieval over a real index and the real embedding model."""

import pandas as pd
import pytest

from tasks import finetuning, indexing, retrieval
from tasks.finetune_settings import FinetuneConfig
from tasks.index_settings import ChunkingConfig, IndexConfig, LexicalConfig, RetrievalConfig
from tasks.lexical_index import LexicalIndex, reciprocal_rank_fusion
from tasks.settings import ConfigError, GenerationConfig, config_from_dict
from tasks.training import Runtime

# Ten valves that differ only in their part number: the embedding model barely separates the numbers,
# BM25 matches them exactly.
VALVES = pd.DataFrame({
    "doc_id": [f"v{i}" for i in range(10)],
    "title": [f"Valve {i}" for i in range(10)],
    "text": [f"Valve part VX-{4410 + i} is rated for {20 + 5 * i} bar and fits the Kellsport pumps."
             for i in range(10)],
})


def _cfg(tmp_path, mode: str = "hybrid", **retrieval_kw) -> IndexConfig:
    return IndexConfig(root=tmp_path / "index", top_k=3, retrieval=RetrievalConfig(mode=mode, **retrieval_kw),
                       chunking=ChunkingConfig(strategy="tokens", max_tokens=64, overlap_tokens=8))


@pytest.fixture
def valve_index(tmp_path):
    return indexing.build_index(VALVES, "fp", _cfg(tmp_path)).path


def test_reciprocal_rank_fusion_rewards_agreement_and_keeps_first_seen_order_on_ties():
    fused = reciprocal_rank_fusion([[7, 1, 2], [9, 1]], rrf_k=60)
    assert [row for row, _ in fused] == [1, 7, 9, 2]
    assert fused[0][1] == pytest.approx(2 / 62)
    assert fused[1][1] == fused[2][1] == pytest.approx(1 / 61)  # a tie: 7 was seen first


def test_bm25_finds_exact_terms_and_returns_nothing_for_unknown_or_stopword_queries():
    lexical = LexicalIndex(VALVES["text"].tolist(), LexicalConfig())
    hits = lexical.search(["Which pressure is VX-4417 rated for?", "zqxw", "the of and"], k=20)
    assert hits[0][0][0] == 7 and len(hits[0]) == 10  # every valve shares "rated"; the part number decides
    assert hits[0][0][1] > hits[0][1][1]
    assert hits[1] == [] and hits[2] == []
    assert LexicalIndex(["the valve", "a pump"], LexicalConfig(stopwords=None)).search(["the"], 5)[0][0][0] == 0


def test_hybrid_search_is_the_fusion_of_the_dense_and_lexical_lists(valve_index, tmp_path):
    cfg = _cfg(tmp_path, fusion_depth=10, rrf_k=60)
    retriever = retrieval.Retriever(valve_index, cfg)
    question = ["Which pressure is valve VX-4417 rated for?"]
    dense, lexical = (retriever.search(question, 10, mode)[0] for mode in ("dense", "lexical"))
    row = {h.chunk_id: i for i, h in enumerate(retriever.search(question, 10, "dense")[0])}
    fused = reciprocal_rank_fusion([[row[h.chunk_id] for h in dense], [row[h.chunk_id] for h in lexical]], 60)
    hybrid = retriever.search(question, 3)[0]
    assert [h.chunk_id for h in hybrid] == [dense[i].chunk_id for i, _ in fused[:3]]
    assert [h.score for h in hybrid] == pytest.approx([s for _, s in fused[:3]])
    assert lexical[0].doc_id == "v7" and "v7" in [h.doc_id for h in hybrid[:2]]


def test_index_report_logs_validation_recall_of_every_retrieval_mode(tmp_path):
    cfg = _cfg(tmp_path, mode="lexical")
    questions = [f"What pressure is VX-{4410 + i} rated for?" for i in range(10)]
    qa = pd.DataFrame({"qa_id": [f"q{i}" for i in range(10)], "question": questions,
                       "answer": [[f"{20 + 5 * i} bar"] for i in range(10)], "doc_id": VALVES["doc_id"]})
    report = indexing.refresh_index(VALVES, cfg, qa, qa.iloc[:0], tmp_path / "cache")
    for mode in indexing.VARIANTS:
        assert 0.0 <= report.variants[f"val_{mode}_recall_at_1"] <= 1.0
    assert report.variants["val_lexical_recall_at_1"] == 1.0 == report.quality["val_recall_at_1"]
    record = indexing.index_record(report, cfg, "fp")
    assert record.params["retrieval"] == "lexical" and record.metrics["val_dense_recall_at_3"] >= 0
    assert "lexical 1.000" in indexing.index_summary(report, cfg)


def test_retrieving_adapters_are_keyed_by_the_retrieval_settings(tiny_model_dir, valve_index, tmp_path):
    keys = {finetuning.adapter_key("raft", tiny_model_dir, "fp", retrieval.Retriever(valve_index, cfg).identity,
                                   FinetuneConfig(), GenerationConfig(), 13, Runtime("cpu", "float32", 2))
            for cfg in (_cfg(tmp_path, "dense"), _cfg(tmp_path, "hybrid"), _cfg(tmp_path, "hybrid", rrf_k=10))}
    assert len(keys) == 3


def test_unknown_retrieval_mode_names_the_key():
    with pytest.raises(ConfigError, match=r"index\.retrieval\.mode"):
        config_from_dict({"index": {"retrieval": {"mode": "bm25"}}})
    with pytest.raises(ConfigError, match=r"index\.retrieval\.lexical\.stopwords"):
        config_from_dict({"index": {"retrieval": {"lexical": {"stopwords": "klingon"}}}})


def test_versions_registered_before_hybrid_retrieval_and_bfloat16_are_served_as_evaluated(tmp_path):
    import yaml

    from tasks.serving import legacy_overrides
    from tasks.settings import config_to_yaml, load_config

    current = load_config("configs/default.yaml")
    new, old = tmp_path / "new.yaml", tmp_path / "old.yaml"
    new.write_text(config_to_yaml(current))
    raw = yaml.safe_load(new.read_text())
    del raw["index"]["retrieval"], raw["generation"]["dtype"]
    old.write_text(yaml.safe_dump(raw))
    assert legacy_overrides(new) == []
    served = load_config(old, legacy_overrides(old))
    assert served.index.retrieval.mode == "dense" and served.generation.dtype == "float32"
    assert current.index.retrieval.mode == "hybrid"
