"""Policy of the online A/B report (champion vs challenger on live traffic); used by tasks.ab_report."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config_base import Strict


class ABConfig(Strict):
    """When the challenger is promoted, the champion kept, or the champion rolled back, from live requests."""

    min_feedback_per_variant: int = Field(
        30, ge=1, description="Rated requests each variant needs; below this in either the decision is "
        "'not enough data'."
    )
    margin: float = Field(
        0.0, ge=0, description="The challenger's mean feedback rating must beat the champion's by more than this."
    )
    require_significance: bool = Field(
        True, description="Promote only when the unpaired bootstrap test also finds the gain significant."
    )
    significance_level: float = Field(
        0.05, gt=0, lt=1, description="One-sided level of the bootstrap test of challenger vs champion ratings."
    )
    confidence_level: float = Field(
        0.95, gt=0, lt=1, description="Coverage of the bootstrap intervals (per-variant metrics and the difference)."
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples of every bootstrap interval and test.")
    regression_metric: Literal["groundedness", "feedback_score"] = Field(
        "groundedness", description="The champion's online metric compared with its own offline value for rollback."
    )
    regression_tolerance: float = Field(
        0.05, ge=0, description="Rollback when the online value, and the upper end of its interval, fall below "
        "the offline value by more than this."
    )
    min_requests_for_regression: int = Field(
        30, ge=1, description="Champion requests with a value of regression_metric needed before rollback is "
        "considered."
    )
