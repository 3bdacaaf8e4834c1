"""Online A/B report: champion vs challenger answering live questions through the gateway.

Pure statistics and policy on a table of recorded gateway requests (one row per request: request_id,
variant, model_version, shadow, latency_ms, groundedness, hallucinated, cost_usd, rating), so the
decision can be tested and explained on its own.

- A shadow request is a challenger answer no user saw: it counts for traffic, groundedness,
  hallucination, latency and cost, never for feedback (a rating on it is ignored).
- feedback_score: mean rating of the rated, non-shadow requests; intervals are percentile bootstraps
  of the mean (tasks.metrics.bootstrap_ci).
- The challenger is compared with the champion by an unpaired two-sample bootstrap of the difference
  of mean ratings (different users ask different questions, so nothing pairs them).
- Checks, in order: rollback when the champion regressed against its own offline value beyond noise,
  not enough data, promote, keep (see `decide_ab`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from tasks.ab_settings import ABConfig
from tasks.metrics import bootstrap_ci
from tasks.records import RunRecord

VARIANTS = ("champion", "challenger")
REQUIRED_COLUMNS = ("request_id", "variant", "model_version", "shadow", "latency_ms", "groundedness",
                    "hallucinated", "cost_usd", "rating")
LATENCY_PERCENTILES = {"latency_p50_ms": 50, "latency_p95_ms": 95}
QUERIES_PER_COST_UNIT = 1000  # cost_per_1k_queries
# How many of a variant's requests have a value of each possible regression metric.
COUNT_COLUMN = {"groundedness": "groundedness_count", "feedback_score": "feedback_count"}
OUTCOMES = {"promote": "promote the challenger", "keep": "keep the champion",
            "rollback": "roll back the champion (it regressed against its offline evaluation)",
            "not_enough_data": "not enough data yet: keep the champion and keep collecting feedback"}

Action = Literal["promote", "keep", "rollback", "not_enough_data"]


@dataclass(frozen=True)
class VariantComparison:
    """Challenger minus champion mean feedback rating, unpaired bootstrap; p is one-sided (H0: difference <= 0)."""

    n_champion: int
    n_challenger: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    def describe(self, cfg: ABConfig) -> str:
        """One line: the difference, its interval and the test's verdict."""
        if not (self.n_champion and self.n_challenger):
            return (f"not tested: {self.n_champion} champion and {self.n_challenger} challenger rated requests "
                    "(both need at least one)")
        verdict = "significant" if self.significant else "not significant"
        return (f"challenger − champion mean feedback rating, {self.n_challenger} vs {self.n_champion} rated "
                f"requests: {self.mean_difference:+.4f}, {cfg.confidence_level:.0%} CI [{self.ci_low:+.4f}, "
                f"{self.ci_high:+.4f}], one-sided p = {self.p_value:.4f}: {verdict} at level {cfg.significance_level}")


def _check(requests: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in requests]
    if missing:
        raise ValueError(f"gateway requests lack the columns {missing}")
    unknown = sorted(set(requests["variant"]) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}: expected {list(VARIANTS)}")


def _rated(rows: pd.DataFrame) -> pd.Series:
    """Ratings of the non-shadow requests that got feedback."""
    return rows.loc[rows["rating"].notna() & ~rows["shadow"].astype(bool), "rating"].astype(float)


def _with_interval(name: str, values: pd.Series, cfg: ABConfig, seed: int) -> dict[str, float]:
    low, high = bootstrap_ci(values.tolist(), cfg.bootstrap_samples, seed, cfg.confidence_level)
    return {name: float(values.mean()), f"{name}_ci_low": low, f"{name}_ci_high": high}


def _variant_row(rows: pd.DataFrame, variant: str, cfg: ABConfig, seed: int) -> dict[str, object]:
    rated, grounded = _rated(rows), rows["groundedness"].dropna().astype(float)
    latency = rows["latency_ms"].dropna().to_numpy(dtype=float)
    row: dict[str, object] = {
        "variant": variant,
        "model_versions": ",".join(sorted(rows["model_version"].dropna().astype(str).unique())),
        "requests": len(rows), "shadow_requests": int(rows["shadow"].astype(bool).sum()),
        "feedback_count": len(rated),
    }
    row |= _with_interval("feedback_score", rated, cfg, seed)
    row["groundedness_count"] = len(grounded)
    row |= _with_interval("groundedness", grounded, cfg, seed)
    row |= _with_interval("hallucination_rate", rows["hallucinated"].dropna().astype(float), cfg, seed)
    row |= {name: float(np.percentile(latency, q)) if latency.size else math.nan
            for name, q in LATENCY_PERCENTILES.items()}
    row["cost_per_1k_queries"] = QUERIES_PER_COST_UNIT * float(rows["cost_usd"].astype(float).mean())
    return row


def variant_summary(requests: pd.DataFrame, cfg: ABConfig, seed: int) -> pd.DataFrame:
    """One row per variant (both always; counts 0 and metrics NaN for a variant without requests)."""
    _check(requests)
    return pd.DataFrame([_variant_row(requests[requests["variant"] == v], v, cfg, seed) for v in VARIANTS])


def compare_variants(requests: pd.DataFrame, cfg: ABConfig, seed: int) -> VariantComparison:
    """Unpaired two-sample bootstrap of challenger − champion mean rating (rated non-shadow requests only).

    Each group is resampled on its own; the interval is the percentile interval of the resampled
    differences and p = (1 + #differences <= 0) / (1 + samples), so never 0.
    """
    _check(requests)
    champion, challenger = (_rated(requests[requests["variant"] == v]).to_numpy() for v in VARIANTS)
    if not (champion.size and challenger.size):
        return VariantComparison(champion.size, challenger.size, math.nan, math.nan, math.nan, 1.0, False)
    rng = np.random.default_rng(seed)

    def resampled_means(values: np.ndarray) -> np.ndarray:
        return values[rng.integers(0, values.size, size=(cfg.bootstrap_samples, values.size))].mean(axis=1)

    differences = resampled_means(challenger) - resampled_means(champion)
    tail = (1 - cfg.confidence_level) / 2 * 100
    p_value = (1 + int(np.count_nonzero(differences <= 0))) / (1 + cfg.bootstrap_samples)
    return VariantComparison(champion.size, challenger.size, float(challenger.mean() - champion.mean()),
                             float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail)),
                             p_value, p_value < cfg.significance_level)


def _cell(row: pd.Series, name: str) -> str:
    if math.isnan(row[name]):
        return "n/a"
    return f"{row[name]:.4f} [{row[f'{name}_ci_low']:.4f}, {row[f'{name}_ci_high']:.4f}]"


@dataclass
class ABDecision:
    action: Action
    reasons: list[str]
    summary: pd.DataFrame
    comparison: VariantComparison

    def to_markdown(self, cfg: ABConfig) -> str:
        lines = ["# A/B decision", "", f"**Outcome:** {OUTCOMES[self.action]}", "", "## Policy", ""]
        lines.append(f"- each variant needs at least {cfg.min_feedback_per_variant} rated requests")
        lines.append(f"- promote when the challenger's mean feedback rating beats the champion's by more than "
                     f"{cfg.margin}; unpaired bootstrap test at one-sided level {cfg.significance_level}"
                     f"{' (required for promotion)' if cfg.require_significance else ' (reported)'}")
        lines.append(f"- roll back when the champion's online {cfg.regression_metric}, and the upper end of its "
                     f"{cfg.confidence_level:.0%} interval, are below its offline value by more than "
                     f"{cfg.regression_tolerance} (checked from {cfg.min_requests_for_regression} requests "
                     "with a value)")
        lines += ["", "## Variants", "",
                  "| variant | model versions | requests | shadow | rated | feedback score | groundedness "
                  "| hallucination rate | latency p50 / p95 ms | cost per 1k queries |", "|---" * 10 + "|"]
        for _, row in self.summary.iterrows():
            lines.append(f"| {row['variant']} | {row['model_versions'] or 'none'} | {row['requests']} | "
                         f"{row['shadow_requests']} | {row['feedback_count']} | {_cell(row, 'feedback_score')} | "
                         f"{_cell(row, 'groundedness')} | {_cell(row, 'hallucination_rate')} | "
                         f"{row['latency_p50_ms']:.1f} / {row['latency_p95_ms']:.1f} | "
                         f"{row['cost_per_1k_queries']:.4f} |")
        lines += ["", "## Challenger vs champion", "", f"- {self.comparison.describe(cfg)}"]
        lines += ["", "## Reasons", ""] + [f"- {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"


def _regression(champion: pd.Series, cfg: ABConfig, offline: dict[str, float]) -> tuple[bool, str]:
    """Whether the champion regressed against its offline value beyond noise, and one line saying why."""
    metric, needed = cfg.regression_metric, cfg.min_requests_for_regression
    expected = offline.get(metric, math.nan)
    if math.isnan(expected):
        return False, f"regression not checked: the champion has no offline {metric}"
    count = int(champion[COUNT_COLUMN[metric]])
    if count < needed:
        return False, f"regression not checked: {count} of {needed} champion requests with a {metric}"
    online, high, floor = champion[metric], champion[f"{metric}_ci_high"], expected - cfg.regression_tolerance
    text = (f"champion online {metric} {online:.4f} ({cfg.confidence_level:.0%} CI up to {high:.4f}, {count} "
            f"requests) vs offline {expected:.4f} − tolerance {cfg.regression_tolerance} = {floor:.4f}")
    if online < floor and high < floor:
        return True, f"{text}: the champion regressed beyond noise, roll it back"
    return False, f"{text}: no regression beyond noise"


def decide_ab(summary: pd.DataFrame, comparison: VariantComparison, cfg: ABConfig,
              champion_offline: dict[str, float]) -> ABDecision:
    """Rollback if the champion regressed; else not_enough_data if either variant lacks ratings; else promote
    if the challenger's gain beats the margin (and is significant when required); else keep."""
    by_variant = summary.set_index("variant")
    regressed, regression_note = _regression(by_variant.loc["champion"], cfg, champion_offline)
    reasons = [regression_note]
    if regressed:
        return ABDecision("rollback", reasons, summary, comparison)
    needed = cfg.min_feedback_per_variant
    short = [f"not enough data: {n} of {needed} rated requests for the {v}"
             for v in VARIANTS if (n := int(by_variant.at[v, "feedback_count"])) < needed]
    if short:
        return ABDecision("not_enough_data", reasons + short, summary, comparison)
    gain, p_value = comparison.mean_difference, comparison.p_value
    if gain <= cfg.margin:
        reasons.append(f"the challenger's mean rating does not beat the champion's by more than the margin "
                       f"{cfg.margin} (difference {gain:+.4f}): the champion stays")
        return ABDecision("keep", reasons, summary, comparison)
    if cfg.require_significance and not comparison.significant:
        reasons.append(f"the challenger's mean rating beats the champion's by {gain:+.4f} > margin {cfg.margin}, "
                       f"but not significantly (one-sided p = {p_value:.4f} ≥ {cfg.significance_level}) and the "
                       "policy requires significance: the champion stays")
        return ABDecision("keep", reasons, summary, comparison)
    reasons.append(f"the challenger's mean rating beats the champion's by {gain:+.4f} > margin {cfg.margin} "
                   f"(one-sided p = {p_value:.4f}, level {cfg.significance_level}): promote the challenger")
    return ABDecision("promote", reasons, summary, comparison)


def ab_record(summary: pd.DataFrame, comparison: VariantComparison, decision: ABDecision,
              cfg: ABConfig) -> RunRecord:
    """Per-variant metrics as `<variant>.<column>` plus the comparison (NaN values are left out), the
    decision as a tag and a markdown text, and the summary table."""
    numeric = summary.set_index("variant").select_dtypes("number")
    metrics = {f"{variant}.{column}": float(value)
               for variant, row in numeric.iterrows() for column, value in row.items()}
    metrics |= {"ab_p_value": comparison.p_value, "ab_mean_difference": comparison.mean_difference}
    return RunRecord(tags={"ab_decision": decision.action},
                     metrics={name: value for name, value in metrics.items() if not math.isnan(value)},
                     texts={"ab_decision.md": decision.to_markdown(cfg)}, tables={"ab_variants.csv": summary})
