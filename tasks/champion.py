"""Champion policy: hard constraints, then a weighted objective, then a margin over the champion.

Pure logic on metric dictionaries, so the decision can be tested and explained on its own;
tasks.promotion applies it to the MLflow registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tasks.settings import ChampionConfig


@dataclass
class Decision:
    challenger: str | None
    challenger_score: float | None
    champion_score: float | None
    promote: bool
    scores: dict[str, float] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

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
        lines += ["", "## Candidates", "", "| candidate | objective | eligible | violations |", "|---|---|---|---|"]
        for name, score in self.scores.items():
            v = self.violations.get(name, [])
            lines.append(f"| {name} | {score:.4f} | {'no' if v else 'yes'} | {'; '.join(v)} |")
        lines += ["", "## Reasons", ""] + [f"- {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"


def violations(metrics: dict[str, float], policy: ChampionConfig) -> list[str]:
    found = []
    for metric, bound in policy.constraints.items():
        value = metrics.get(metric)
        if value is None or math.isnan(value):
            found.append(f"{metric} missing")
        elif bound.min is not None and value < bound.min:
            found.append(f"{metric}={value:.4g} < {bound.min}")
        elif bound.max is not None and value > bound.max:
            found.append(f"{metric}={value:.4g} > {bound.max}")
    return found


def objective(metrics: dict[str, float], policy: ChampionConfig) -> float:
    """Weighted sum of the objective's metrics; a missing metric counts as NaN (never wins)."""
    return sum(weight * metrics.get(metric, float("nan")) for metric, weight in policy.objective.items())


def decide(candidates: dict[str, dict[str, float]], policy: ChampionConfig,
           champion_metrics: dict[str, float] | None) -> Decision:
    """Pick the best eligible candidate and decide whether it replaces the current champion."""
    scores = {name: objective(m, policy) for name, m in candidates.items()}
    viols = {name: violations(m, policy) for name, m in candidates.items()}
    eligible = {n: s for n, s in scores.items() if not viols[n] and not math.isnan(s)}
    decision = Decision(None, None, None, False, scores, viols)
    for name, v in viols.items():
        if v:
            decision.reasons.append(f"{name} is not eligible: {'; '.join(v)}")
    if not eligible:
        decision.reasons.append("no candidate meets the constraints: nothing is promoted")
        return decision
    best = max(eligible, key=lambda n: (eligible[n], n))
    decision.challenger, decision.challenger_score = best, eligible[best]
    decision.reasons.append(f"challenger: {best} (objective {eligible[best]:.4f}, best of {sorted(eligible)})")
    if champion_metrics is None:
        decision.promote = True
        decision.reasons.append("there is no current champion: the challenger becomes champion")
        return decision
    decision.champion_score = objective(champion_metrics, policy)
    gain = decision.challenger_score - decision.champion_score
    if math.isnan(decision.champion_score) or gain > policy.margin:
        decision.promote = True
        decision.reasons.append(
            f"challenger beats the champion ({decision.champion_score:.4f}) by {gain:.4f} > margin {policy.margin}")
    else:
        decision.reasons.append(
            f"challenger does not beat the champion ({decision.champion_score:.4f}) by more than the margin "
            f"{policy.margin} (difference {gain:+.4f}): the champion stays")
    return decision
