"""The online A/B report on simulated gateway requests: statistics, the decision policy and the run record."""

import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from tasks.ab_report import VARIANTS, ab_record, compare_variants, decide_ab, variant_summary
from tasks.ab_settings import ABConfig

CFG = ABConfig()
OFFLINE = {"groundedness": 0.8, "f1": 0.6}


def requests(variant: str, n: int, rating_p: float | None, rng: np.random.Generator, *, groundedness: float = 0.8,
             rated: int | None = None, shadow: bool = False, version: str = "1") -> pd.DataFrame:
    """n simulated requests of one variant; the first `rated` (default all) get a Bernoulli(rating_p) rating."""
    rated = n if rated is None else rated
    ratings = np.full(n, np.nan)
    if rating_p is not None:
        ratings[:rated] = rng.binomial(1, rating_p, size=rated)
    grounded = np.clip(rng.normal(groundedness, 0.1, size=n), 0, 1)
    return pd.DataFrame({
        "request_id": [f"{variant}-{version}-{shadow}-{i}" for i in range(n)],
        "variant": variant, "model_version": version, "shadow": shadow,
        "latency_ms": rng.gamma(4.0, 50.0, size=n), "groundedness": grounded,
        "hallucinated": (grounded < 0.5).astype(float), "cost_usd": rng.uniform(0.0001, 0.001, size=n),
        "rating": ratings,
    })


def traffic(champion_p: float | None, challenger_p: float | None, n: int = 300, seed: int = 0,
            **champion_kwargs) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([requests("champion", n, champion_p, rng, **champion_kwargs),
                      requests("challenger", n, challenger_p, rng, version="2")], ignore_index=True)


def run(table: pd.DataFrame, cfg: ABConfig = CFG, offline: dict[str, float] = OFFLINE, seed: int = 0):
    summary = variant_summary(table, cfg, seed)
    comparison = compare_variants(table, cfg, seed)
    return summary, comparison, decide_ab(summary, comparison, cfg, offline)


def test_a_truly_better_challenger_is_promoted():
    _, comparison, decision = run(traffic(0.5, 0.8))
    assert decision.action == "promote", decision.reasons
    assert comparison.significant and comparison.ci_low > 0
    assert comparison.ci_low < comparison.mean_difference < comparison.ci_high
    assert 0.2 < comparison.mean_difference < 0.4


def test_a_truly_worse_challenger_is_kept():
    _, comparison, decision = run(traffic(0.6, 0.4))
    assert decision.action == "keep"
    assert comparison.mean_difference < 0 and not comparison.significant
    assert "does not beat the champion's by more than the margin" in decision.reasons[-1]


def _fixed_ratings(champion_ones: int, challenger_ones: int, n: int = 50) -> pd.DataFrame:
    table = traffic(0.5, 0.5, n=n)
    for variant, ones in (("champion", champion_ones), ("challenger", challenger_ones)):
        table.loc[table["variant"] == variant, "rating"] = [1.0] * ones + [0.0] * (n - ones)
    return table


def test_a_small_gain_that_is_not_significant_keeps_the_champion_unless_significance_is_optional():
    table = _fixed_ratings(25, 27)  # +0.04, far from significant with 50 ratings each
    _, comparison, decision = run(table)
    assert comparison.mean_difference == pytest.approx(0.04)
    assert not comparison.significant
    assert decision.action == "keep"
    assert "not significantly" in decision.reasons[-1] and "+0.0400" in decision.reasons[-1]
    assert run(table, ABConfig(require_significance=False))[2].action == "promote"
    assert run(table, ABConfig(require_significance=False, margin=0.05))[2].action == "keep"


def test_p_value_follows_the_add_one_formula():
    table = _fixed_ratings(0, 50)  # every resampled difference is +1
    comparison = compare_variants(table, CFG, seed=0)
    assert comparison.p_value == pytest.approx(1 / (1 + CFG.bootstrap_samples))
    assert comparison.mean_difference == comparison.ci_low == comparison.ci_high == 1.0
    reverse = compare_variants(_fixed_ratings(50, 0), CFG, seed=0)
    assert reverse.p_value == 1.0 and not reverse.significant
    ties = compare_variants(_fixed_ratings(50, 50), CFG, seed=0)  # every resampled difference is exactly 0
    assert ties.p_value == 1.0 and not ties.significant


def test_too_little_traffic_is_not_enough_data_and_names_the_short_variant():
    rng = np.random.default_rng(1)
    table = pd.concat([requests("champion", 300, 0.5, rng),
                       requests("challenger", 100, 0.9, rng, rated=12, version="2")], ignore_index=True)
    summary, _, decision = run(table)
    assert decision.action == "not_enough_data"
    assert "not enough data: 12 of 30 rated requests for the challenger" in decision.reasons
    assert not any("for the champion" in r for r in decision.reasons)
    assert summary.set_index("variant").at["challenger", "requests"] == 100


def test_both_short_variants_are_named():
    _, _, decision = run(traffic(0.5, 0.5, n=10))
    assert decision.action == "not_enough_data"
    assert [r for r in decision.reasons if r.startswith("not enough data")] == [
        "not enough data: 10 of 30 rated requests for the champion",
        "not enough data: 10 of 30 rated requests for the challenger"]


def test_a_champion_far_below_its_offline_groundedness_is_rolled_back():
    summary, _, decision = run(traffic(0.5, 0.5, groundedness=0.5))
    assert decision.action == "rollback"
    assert "regressed" in decision.reasons[0]
    # rollback comes first, even when there is not enough feedback to compare the variants
    assert run(traffic(None, None, groundedness=0.5))[2].action == "rollback"


def test_a_champion_slightly_below_its_offline_groundedness_within_noise_is_not_rolled_back():
    table = traffic(0.5, 0.5, n=40)
    champion = table["variant"] == "champion"
    table.loc[champion, "groundedness"] = [0.48, 1.0] * 20  # mean 0.74 < 0.8 - 0.05, but noisy
    summary, _, decision = run(table)
    row = summary.set_index("variant").loc["champion"]
    floor = OFFLINE["groundedness"] - CFG.regression_tolerance
    assert row["groundedness"] < floor < row["groundedness_ci_high"]
    assert decision.action != "rollback"
    assert "no regression beyond noise" in decision.reasons[0]


def test_regression_needs_enough_champion_requests_and_an_offline_value():
    low = traffic(0.5, 0.5, n=20, groundedness=0.3)
    _, _, decision = run(low)
    assert decision.action != "rollback"
    assert decision.reasons[0] == "regression not checked: 20 of 30 champion requests with a groundedness"
    _, _, without_offline = run(traffic(0.5, 0.5, groundedness=0.3), offline={})
    assert without_offline.action != "rollback"
    assert "no offline groundedness" in without_offline.reasons[0]


def test_feedback_score_regression_uses_an_offline_feedback_score_only_when_given():
    cfg = ABConfig(regression_metric="feedback_score")
    table = traffic(0.3, 0.3)
    assert run(table, cfg, offline=OFFLINE)[2].action != "rollback"
    assert run(table, cfg, offline={"feedback_score": 0.8})[2].action == "rollback"


def test_shadow_rows_never_count_as_rated():
    rng = np.random.default_rng(2)
    shadow = requests("challenger", 200, 0.9, rng, shadow=True, version="2")  # ratings where none can exist
    table = pd.concat([requests("champion", 100, 0.5, rng), requests("challenger", 20, 0.5, rng, version="2"),
                       shadow], ignore_index=True)
    summary = variant_summary(table, CFG, seed=0).set_index("variant")
    assert summary.at["challenger", "requests"] == 220
    assert summary.at["challenger", "shadow_requests"] == 200
    assert summary.at["challenger", "feedback_count"] == 20
    assert summary.at["challenger", "groundedness_count"] == 220
    assert compare_variants(table, CFG, seed=0).n_challenger == 20
    assert run(table)[2].action == "not_enough_data"


def test_the_summary_always_has_both_variants():
    rng = np.random.default_rng(3)
    summary = variant_summary(requests("champion", 50, 0.5, rng), CFG, seed=0)
    assert summary["variant"].tolist() == list(VARIANTS)
    challenger = summary.set_index("variant").loc["challenger"]
    assert challenger["requests"] == challenger["feedback_count"] == challenger["shadow_requests"] == 0
    assert math.isnan(challenger["feedback_score"]) and math.isnan(challenger["latency_p95_ms"])
    assert challenger["model_versions"] == ""
    empty = variant_summary(requests("champion", 0, None, rng), CFG, seed=0)
    assert empty["requests"].tolist() == [0, 0]
    _, comparison, decision = run(requests("champion", 50, 0.5, rng))
    assert comparison.n_challenger == 0 and math.isnan(comparison.mean_difference)
    assert "not enough data: 0 of 30 rated requests for the challenger" in decision.reasons
    assert "# A/B decision" in decision.to_markdown(CFG)


def test_intervals_contain_the_mean_and_metrics_are_computed_per_variant():
    table = traffic(0.5, 0.8)
    summary = variant_summary(table, CFG, seed=0).set_index("variant")
    for variant in VARIANTS:
        row, rows = summary.loc[variant], table[table["variant"] == variant]
        for metric in ("feedback_score", "groundedness", "hallucination_rate"):
            assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], (variant, metric)
        assert row["feedback_score"] == pytest.approx(rows["rating"].mean())
        assert row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["cost_per_1k_queries"] == pytest.approx(1000 * rows["cost_usd"].mean())
    assert summary.at["challenger", "feedback_score_ci_low"] > summary.at["champion", "feedback_score_ci_high"]
    assert summary.at["champion", "model_versions"] == "1"


def test_model_versions_lists_each_distinct_version():
    rng = np.random.default_rng(4)
    table = pd.concat([requests("champion", 5, 0.5, rng, version=v) for v in ("3", "1", "3")], ignore_index=True)
    assert variant_summary(table, CFG, seed=0).at[0, "model_versions"] == "1,3"


def test_the_record_carries_the_expected_metrics_tags_and_artifacts():
    summary, comparison, decision = run(traffic(0.5, 0.8))
    record = ab_record(summary, comparison, decision, CFG)
    for variant in VARIANTS:
        for column in ("requests", "shadow_requests", "feedback_count", "feedback_score", "feedback_score_ci_low",
                       "feedback_score_ci_high", "groundedness", "groundedness_ci_low", "groundedness_ci_high",
                       "hallucination_rate", "hallucination_rate_ci_low", "hallucination_rate_ci_high",
                       "latency_p50_ms", "latency_p95_ms", "cost_per_1k_queries"):
            assert f"{variant}.{column}" in record.metrics
        assert f"{variant}.model_versions" not in record.metrics and f"{variant}.variant" not in record.metrics
    assert record.metrics["ab_p_value"] == comparison.p_value
    assert record.metrics["ab_mean_difference"] == comparison.mean_difference
    assert record.tags == {"ab_decision": "promote"}
    markdown = record.texts["ab_decision.md"]
    assert markdown.startswith("# A/B decision") and "promote the challenger" in markdown
    assert decision.reasons[-1] in markdown and "| challenger | 2 |" in markdown
    assert record.tables["ab_variants.csv"] is summary


def test_the_record_leaves_out_missing_values():
    rng = np.random.default_rng(5)
    summary, comparison, decision = run(requests("champion", 40, 0.5, rng))
    record = ab_record(summary, comparison, decision, CFG)
    assert record.metrics["challenger.requests"] == 0
    assert "challenger.feedback_score" not in record.metrics and "ab_mean_difference" not in record.metrics
    assert all(not math.isnan(v) for v in record.metrics.values())


def test_the_same_seed_gives_the_same_report():
    table = traffic(0.5, 0.6)
    assert compare_variants(table, CFG, seed=7) == compare_variants(table, CFG, seed=7)
    pd.testing.assert_frame_equal(variant_summary(table, CFG, seed=7), variant_summary(table, CFG, seed=7))


def test_bad_input_and_bad_config_are_rejected():
    table = traffic(0.5, 0.5, n=5)
    with pytest.raises(ValueError, match="unknown variants"):
        variant_summary(table.assign(variant="canary"), CFG, seed=0)
    with pytest.raises(ValueError, match="rating"):
        compare_variants(table.drop(columns="rating"), CFG, seed=0)
    with pytest.raises(ValidationError):
        ABConfig(significance_level=1.0)
    with pytest.raises(ValidationError):
        ABConfig(regression_metric="f1")
    with pytest.raises(ValidationError):
        ABConfig(unknown=1)
