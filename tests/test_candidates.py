"""The candidate declarations drive config validation, the pipeline's plan and which system answers."""

import pytest

from tasks import candidates
from tasks.answering import Answerer, EndpointAnswerer, answerer_for
from tasks.settings import ConfigError, EndpointConfig, GenerationConfig, load_config


def test_the_four_candidates_are_declared_once():
    assert list(candidates.CANDIDATES) == ["base", "finetuned", "rag", "hybrid"]
    assert {c.name: (c.adapter, c.retrieves) for c in candidates.CANDIDATES.values()} == {
        "base": (None, False), "finetuned": ("closed_book", False), "rag": (None, True), "hybrid": ("raft", True)}
    assert all(c.adapter in candidates.ADAPTER_MODES for c in candidates.CANDIDATES.values() if c.adapter)


def test_config_accepts_declared_names_and_names_the_unknown_one():
    cfg = load_config("configs/ci.yaml", ["evaluation.candidates=[hybrid, base]"])
    assert cfg.evaluation.candidates == ["hybrid", "base"]
    with pytest.raises(ConfigError, match=r"evaluation.candidates.*unknown candidate\(s\) \['rag_xl'\]"):
        load_config("configs/ci.yaml", ["evaluation.candidates=[base, rag_xl]"])


def test_plan_trains_only_what_the_evaluated_candidates_use():
    full = candidates.plan(["base", "finetuned", "rag", "hybrid"], evaluate=True)
    assert full.adapter_modes == ("closed_book", "raft") and full.needs_index
    assert [c.name for c in full.candidates] == ["base", "finetuned", "rag", "hybrid"]
    closed = candidates.plan(["base", "finetuned"], evaluate=True)
    assert closed.adapter_modes == ("closed_book",) and not closed.needs_index
    rag_only = candidates.plan(["rag"], evaluate=True)
    assert rag_only.adapter_modes == () and rag_only.needs_index


def test_plan_for_one_adapter_needs_the_index_only_for_passage_training():
    assert candidates.plan(["base"], evaluate=False, mode="raft") == candidates.Plan((), ("raft",), True)
    assert candidates.plan(["rag", "hybrid"], evaluate=False, mode="closed_book") == candidates.Plan(
        (), ("closed_book",), False)


def test_unknown_candidate_lookup_names_the_known_ones():
    with pytest.raises(KeyError, match="known: \\['base', 'finetuned', 'hybrid', 'rag'\\]"):
        candidates.get("rerank")


def test_the_declared_generator_answers(tiny_model_dir):
    plain = load_config("configs/ci.yaml")
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m")
    with_endpoint = plain.model_copy(update={"generation": GenerationConfig(endpoint=endpoint)})
    rag, base = candidates.get("rag"), candidates.get("base")
    assert isinstance(answerer_for(base, with_endpoint, tiny_model_dir, None, None), Answerer)
    retriever = object()  # never queried here
    assert isinstance(answerer_for(rag, with_endpoint, tiny_model_dir, None, retriever), EndpointAnswerer)
    assert isinstance(answerer_for(rag, plain, tiny_model_dir, None, retriever), Answerer)
    with pytest.raises(ValueError, match="rag needs a retriever"):
        answerer_for(rag, plain, tiny_model_dir, None, None)
