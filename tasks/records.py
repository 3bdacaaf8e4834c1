"""What a stage shows in MLflow, as plain data: each stage builds a RunRecord from its result, and
tasks.tracking.log_record writes it to the active run. Stages stay testable without a tracking store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@dataclass
class RunRecord:
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric -> (step, value) history
    texts: dict[str, str] = field(default_factory=dict)  # artifact path -> text
    dicts: dict[str, Any] = field(default_factory=dict)  # artifact path -> JSON-able object
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # file name under tables/ -> table (CSV)
    figures: dict[str, Callable[[], Figure]] = field(default_factory=dict)  # artifact path -> figure maker
    directories: dict[str, str] = field(default_factory=dict)  # artifact path -> local directory
