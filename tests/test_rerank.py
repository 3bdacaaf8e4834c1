"""Cross-encoder reranking (`index.retrieval.rerank`) over a real index: a real sentence-transformers CrossEncoder
(the MiniLM encoder with a one-output head, seeded; no trained reranker ships offline), its scores decide the
order; without one every dump and cache key is what it was before reranking existed."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
import torch

from tasks import evaluation, finetuning, indexing, retrieval, tuning
from tasks.candidates import CANDIDATES
from tasks.finetune_settings import FinetuneConfig
from tasks.index_settings import ChunkingConfig, IndexConfig, RerankConfig, RetrievalConfig
from tasks.models import embedding_model_dir
from tasks.settings import ConfigError, GenerationConfig, load_config
from tasks.training import Runtime
from tests.conftest import ROOT
from tests.test_hybrid_retrieval import VALVES


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory) -> str:
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(embedding_model_dir(IndexConfig())), num_labels=1, device="cpu")
    out = tmp_path_factory.mktemp("reranker")
    model.save_pretrained(str(out))
    return str(out)


def _cfg(tmp_path, rerank_dir: str | None, depth: int = 10) -> IndexConfig:
    rerank = RerankConfig(path=rerank_dir, depth=depth) if rerank_dir else None
    return IndexConfig(root=tmp_path / "index", top_k=3, retrieval=RetrievalConfig(mode="dense", rerank=rerank),
                       chunking=ChunkingConfig(strategy="tokens", max_tokens=64, overlap_tokens=8))


def test_the_cross_encoder_orders_the_shortlist_and_k_is_kept(cross_encoder_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    cfg = _cfg(tmp_path, cross_encoder_dir, depth=10)
    retriever = retrieval.Retriever(indexing.build_index(VALVES, "fp", cfg).path, cfg)
    question = "Which pressure is valve VX-4417 rated for?"
    shortlist = retriever.search([question], 10, rerank=False)[0]
    scores = CrossEncoder(cross_encoder_dir, device="cpu").predict([(question, h.text) for h in shortlist])
    expected = [h.chunk_id for _, h in sorted(zip(scores, shortlist, strict=True), key=lambda p: -p[0])][:3]
    reranked = retriever.search([question])[0]
    assert [h.chunk_id for h in reranked] == expected
    assert [h.score for h in reranked] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-5)
    assert expected != [h.chunk_id for h in shortlist[:3]]  # the seeded head reorders: the check has teeth
    assert [h.chunk_id for h in retriever.search([question], 3, rerank=False)[0]] == [
        h.chunk_id for h in shortlist[:3]]


def test_without_a_reranker_dumps_and_keys_are_unchanged_and_with_one_they_change(cross_encoder_dir, tmp_path,
                                                                                   tiny_model_dir):
    plain, reranked = _cfg(tmp_path, None), _cfg(tmp_path, cross_encoder_dir)
    assert "rerank" not in plain.model_dump(mode="json")["retrieval"]
    path = indexing.build_index(VALVES, "fp", plain).path
    ids = [retrieval.Retriever(path, c).identity for c in (plain, reranked)]
    assert "reranker" not in ids[0] and len(ids[1]["reranker"]) == 16
    keys = {finetuning.adapter_key("raft", tiny_model_dir, "fp", i, FinetuneConfig(), GenerationConfig(), 13,
                                   Runtime("cpu", "float32", 2)) for i in ids}
    assert len(keys) == 2
    base = load_config(ROOT / "configs" / "ci.yaml")
    test = pd.DataFrame({"qa_id": ["q"], "question": ["?"], "answer": [["a"]], "doc_id": ["v0"], "split": ["test"]})
    eval_keys = {evaluation.evaluation_key(CANDIDATES["rag"], base.model_copy(update={"index": c}), None, "idx", test,
                                           {"v0": "x"}) for c in (plain, reranked)}
    assert len(eval_keys) == 2


def test_a_reranker_path_without_a_model_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "ci.yaml", [f"index.retrieval.rerank.path={tmp_path}"])
    assert "index.retrieval.rerank.path" in str(err.value) and "config.json" in str(err.value)


def test_the_index_run_measures_with_the_reranker_and_each_mode_without(cross_encoder_dir, tmp_path):
    cfg = _cfg(tmp_path, cross_encoder_dir)
    qa = pd.DataFrame({"qa_id": [f"q{i}" for i in range(10)], "question": [f"What is VX-{4410 + i} rated for?"
                                                                           for i in range(10)],
                       "answer": [[f"{20 + 5 * i} bar"] for i in range(10)], "doc_id": VALVES["doc_id"]})
    report = indexing.refresh_index(VALVES, cfg, qa, qa.iloc[:0], tmp_path / "cache")
    retriever = retrieval.Retriever(report.build.path, cfg)
    assert report.quality["val_mrr_at_3"] == pytest.approx(retrieval.evaluate_retrieval(retriever, qa, [3])["mrr_at_3"])
    assert report.variants["val_dense_mrr_at_3"] == pytest.approx(
        retrieval.evaluate_retrieval(retriever, qa, [3], rerank=False)["mrr_at_3"])
    assert report.quality["val_mrr_at_3"] != report.variants["val_dense_mrr_at_3"]
    assert "dense reranked" in indexing.index_summary(report, cfg)
    assert indexing.index_record(report, cfg, "fp").params["reranker"] == cross_encoder_dir


def test_the_retrieval_study_tries_the_reranker_on_and_off(cross_encoder_dir):
    plain = load_config(ROOT / "configs" / "ci.yaml")
    cfg = load_config(ROOT / "configs" / "ci.yaml", [f"index.retrieval.rerank.path={cross_encoder_dir}"])
    assert "rerank" not in tuning.baseline_params(plain) and tuning.baseline_params(cfg)["rerank"] is True
    off = {**tuning.baseline_params(cfg), "rerank": False}
    assert tuning.suggest_retrieval(optuna.trial.FixedTrial(off), cfg.tune.retrieval, 256, True) == off
    assert "rerank" not in tuning.suggest_retrieval(optuna.trial.FixedTrial(off), cfg.tune.retrieval, 256, False)
    budget = tuning.passage_budget(cfg)
    assert tuning.configured(cfg, tuning.retrieval_overrides(off, budget, True)).index.retrieval.rerank is None
    kept = tuning.configured(cfg, tuning.retrieval_overrides(tuning.baseline_params(cfg), budget, True))
    assert kept.index == cfg.index
    assert "reranker on/off" in tuning.space_text(cfg.tune.retrieval, budget, True)
