from tasks.champion import decide
from tasks.settings import ChampionConfig

POLICY = ChampionConfig.model_validate({
    "constraints": {"latency_p95_ms": {"max": 1500}, "hallucination_rate": {"max": 0.3}},
    "objective": {"f1": 1.0, "exact_match": 0.5}, "margin": 0.02,
})
CANDIDATES = {
    "base": {"f1": 0.10, "exact_match": 0.0, "latency_p95_ms": 500, "hallucination_rate": 0.1},
    "rag": {"f1": 0.60, "exact_match": 0.4, "latency_p95_ms": 2000, "hallucination_rate": 0.1},
    "hybrid": {"f1": 0.50, "exact_match": 0.3, "latency_p95_ms": 1200, "hallucination_rate": 0.2},
}


def test_constraints_exclude_best_raw_score():
    d = decide(CANDIDATES, POLICY, None)
    assert d.challenger == "hybrid"
    assert d.promote
    assert any("rag is not eligible" in r and "latency_p95_ms" in r for r in d.reasons)


def test_champion_kept_within_margin():
    champion = {"f1": 0.64, "exact_match": 0.0}  # objective 0.64 vs challenger 0.65: gain 0.01 < 0.02
    d = decide(CANDIDATES, POLICY, champion)
    assert d.challenger == "hybrid" and not d.promote
    assert "the champion stays" in d.reasons[-1]


def test_champion_replaced_beyond_margin():
    d = decide(CANDIDATES, POLICY, {"f1": 0.3, "exact_match": 0.1})
    assert d.promote


def test_nothing_eligible_promotes_nothing():
    d = decide({"x": {"f1": 1.0, "exact_match": 1.0, "latency_p95_ms": 9e9, "hallucination_rate": 0}}, POLICY, None)
    assert d.challenger is None and not d.promote


def test_missing_metric_is_a_violation():
    d = decide({"x": {"f1": 1.0, "exact_match": 1.0}}, POLICY, None)
    assert d.challenger is None
    assert "latency_p95_ms missing" in d.violations["x"][0]


def test_markdown_states_outcome():
    text = decide(CANDIDATES, POLICY, None).to_markdown(POLICY)
    assert "promote hybrid" in text and "| rag |" in text
