"""Champion policy: hard constraints, then a weighted objective, then a margin over the champion.

Pure logic on metric dictionaries (and, for the significance test, per-question score tables),
so the decision can be tested and explained on its own; tasks.promotion applies it to the
MLflow registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from tasks.metrics import PairedBootstrap, paired_bootstrap
from tasks.settings import ChampionConfig

FALLBACK_METRIC = "f1"
# Measured in time: their constraints are not enforced on a measurement that other processes disturbed.
LOAD_SENSITIVE = ("latency_", "ttft_", "batch_latency_", "batch_ttft_")


@dataclass
class Decision:
    challenger: str | None
    challenger_score: float | None
    champion_score: float | None
    promote: bool
    scores: dict[str, float] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)
    not_enforced: dict[str, list[str]] = field(default_factory=dict)  # latency bounds on disturbed measurements
    reasons: list[str] = field(default_factory=list)
    significance: PairedBootstrap | None = None
    significance_metric: str | None = None  # what was compared per question: "objective" or a metric name
    significance_note: str = "not tested: there is no current champion"

    def to_markdown(self, policy: ChampionConfig) -> str:
        lines = ["# Champion decision", ""]
        lines.append(f"**Outcome:** {'promote ' + self.challenger if self.promote else 'keep the current champion'}")
        lines += ["", "## Policy", ""]
        for metric, bound in policy.constraints.items():
            parts = [f"≥ {bound.min}" if bound.min is not None else "",
                     f"≤ {bound.max}" if bound.max is not None else ""]
            lines.append(f"- constraint `{metric}` {' and '.join(p for p in parts if p)}")
        lines.append("- objective: " + " + ".join(f"{w} × `{m}`" for m, w in policy.objective.items()))
        lines.append(f"- margin over the current champion: {policy.margin}")
        lines.append(f"- significance: paired bootstrap, one-sided level {policy.significance_level}"
                     f"{' (required for promotion)' if policy.require_significance else ' (reported)'}")
        lines += ["", "## Candidates", "", "| candidate | objective | eligible | violations |", "|---|---|---|---|"]
        for name, score in self.scores.items():
            v = self.violations.get(name, [])
            waived = [f"not enforced (disturbed measurement): {w}" for w in self.not_enforced.get(name, [])]
            lines.append(f"| {name} | {score:.4f} | {'no' if v else 'yes'} | {'; '.join(v + waived)} |")
        lines += ["", "## Challenger vs champion", "", f"- {self.significance_note}"]
        lines += ["", "## Reasons", ""] + [f"- {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"


def _broken(metrics: dict[str, float], policy: ChampionConfig) -> list[tuple[str, str]]:
    found = []
    for metric, bound in policy.constraints.items():
        value = metrics.get(metric)
        if value is None or math.isnan(value):
            found.append((metric, f"{metric} missing"))
        elif bound.min is not None and value < bound.min:
            found.append((metric, f"{metric}={value:.4g} < {bound.min}"))
        elif bound.max is not None and value > bound.max:
            found.append((metric, f"{metric}={value:.4g} > {bound.max}"))
    return found


def _disturbed(metrics: dict[str, float]) -> bool:
    return metrics.get("latency_disturbed", 0.0) >= 1


def violations(metrics: dict[str, float], policy: ChampionConfig) -> list[str]:
    """The constraints a candidate breaks; a latency bound on a disturbed measurement does not count."""
    return [text for metric, text in _broken(metrics, policy)
            if not (_disturbed(metrics) and metric.startswith(LOAD_SENSITIVE))]


def not_enforced(metrics: dict[str, float], policy: ChampionConfig) -> list[str]:
    """Latency bounds broken on a measurement other processes disturbed: reported, not enforced."""
    if not _disturbed(metrics):
        return []
    return [f"{text} (other processes used {metrics.get('latency_other_cores', float('nan')):.1f} cores)"
            for metric, text in _broken(metrics, policy) if metric.startswith(LOAD_SENSITIVE)]


def objective(metrics: dict[str, float], policy: ChampionConfig) -> float:
    """Weighted sum of the objective's metrics; a missing metric counts as NaN (never wins)."""
    return sum(weight * metrics.get(metric, float("nan")) for metric, weight in policy.objective.items())


def per_question_scores(table: pd.DataFrame, policy: ChampionConfig) -> tuple[pd.Series, str]:
    """Per-question objective indexed by qa_id, or per-question f1 when an objective metric has no
    per-question column (e.g. a latency percentile); returns the scores and what they are."""
    indexed = table.set_index("qa_id")
    if all(m in indexed for m in policy.objective):
        return sum(w * indexed[m].astype(float) for m, w in policy.objective.items()), "objective"
    return indexed[FALLBACK_METRIC].astype(float), FALLBACK_METRIC


def compare_paired(challenger: pd.DataFrame, champion: pd.DataFrame, policy: ChampionConfig,
                   seed: int) -> tuple[PairedBootstrap | None, str | None, str]:
    """Paired bootstrap of challenger vs champion on their shared questions, and one line saying what it found."""
    ours, what = per_question_scores(challenger, policy)
    theirs, their_what = per_question_scores(champion, policy)
    if what != their_what:
        ours, what = per_question_scores(challenger[["qa_id", FALLBACK_METRIC]], policy)
        theirs, _ = per_question_scores(champion[["qa_id", FALLBACK_METRIC]], policy)
    shared = ours.index.intersection(theirs.index)
    if shared.empty:
        return None, what, "not tested: challenger and champion were scored on no common question"
    result = paired_bootstrap(ours.loc[shared].tolist(), theirs.loc[shared].tolist(), policy.bootstrap_samples,
                              seed, policy.significance_level, policy.confidence_level)
    verdict = "significant" if result.significant else "not significant"
    note = (f"challenger − champion on per-question {what}, {result.n} shared questions: mean "
            f"{result.mean_difference:+.4f}, {result.confidence_level:.0%} CI [{result.ci_low:+.4f}, "
            f"{result.ci_high:+.4f}], one-sided p = {result.p_value:.4f}: {verdict} at level "
            f"{result.significance_level}")
    return result, what, note


def _eligible(candidates: dict[str, dict[str, float]], policy: ChampionConfig) -> dict[str, float]:
    return {n: s for n, m in candidates.items()
            if not violations(m, policy) and not math.isnan(s := objective(m, policy))}


def pick_challenger(candidates: dict[str, dict[str, float]], policy: ChampionConfig) -> str | None:
    """The best candidate that meets every constraint (ties go to the later name), or None."""
    eligible = _eligible(candidates, policy)
    return max(eligible, key=lambda n: (eligible[n], n)) if eligible else None


def decide(candidates: dict[str, dict[str, float]], policy: ChampionConfig,
           champion_metrics: dict[str, float] | None, per_question: dict[str, pd.DataFrame] | None = None,
           champion_per_question: pd.DataFrame | None = None, seed: int = 0) -> Decision:
    """Pick the best eligible candidate and decide whether it replaces the current champion.

    per_question (candidate -> table with qa_id and metric columns) and champion_per_question
    enable the paired significance test; without them the decision says it was not tested.
    """
    scores = {name: objective(m, policy) for name, m in candidates.items()}
    viols = {name: violations(m, policy) for name, m in candidates.items()}
    eligible = _eligible(candidates, policy)
    decision = Decision(None, None, None, False, scores, viols)
    decision.not_enforced = {n: w for n, m in candidates.items() if (w := not_enforced(m, policy))}
    for name, v in viols.items():
        if v:
            decision.reasons.append(f"{name} is not eligible: {'; '.join(v)}")
    for name, waived in decision.not_enforced.items():
        decision.reasons.append(f"{name}: latency measured while the machine was busy, so not enforced: "
                                f"{'; '.join(waived)}")
    if not eligible:
        decision.significance_note = "not tested: there is no challenger"
        decision.reasons.append("no candidate meets the constraints: nothing is promoted")
        return decision
    best = pick_challenger(candidates, policy)
    decision.challenger, decision.challenger_score = best, eligible[best]
    decision.reasons.append(f"challenger: {best} (objective {eligible[best]:.4f}, best of {sorted(eligible)})")
    if champion_metrics is None:
        decision.promote = True
        decision.reasons.append("there is no current champion: the challenger becomes champion")
        return decision
    if champion_per_question is None or per_question is None or best not in per_question:
        decision.significance_note = "not tested: per-question scores of challenger and champion are not both given"
    else:
        decision.significance, decision.significance_metric, decision.significance_note = compare_paired(
            per_question[best], champion_per_question, policy, seed)
    decision.reasons.append(f"paired test: {decision.significance_note}")
    decision.champion_score = objective(champion_metrics, policy)
    gain = decision.challenger_score - decision.champion_score
    significant = decision.significance is not None and decision.significance.significant
    if math.isnan(decision.champion_score):
        decision.promote = True
        decision.reasons.append("the champion has no objective score on this evaluation set: the challenger "
                                "replaces it")
    elif gain <= policy.margin:
        decision.reasons.append(
            f"challenger does not beat the champion ({decision.champion_score:.4f}) by more than the margin "
            f"{policy.margin} (difference {gain:+.4f}): the champion stays")
    elif policy.require_significance and not significant:
        decision.reasons.append(
            f"challenger beats the champion ({decision.champion_score:.4f}) by {gain:.4f} > margin {policy.margin}, "
            "but the policy requires a significant gain and the paired test did not show one: the champion stays")
    else:
        decision.promote = True
        decision.reasons.append(
            f"challenger beats the champion ({decision.champion_score:.4f}) by {gain:.4f} > margin {policy.margin}")
    return decision
