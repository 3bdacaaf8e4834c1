"""What a tuning study leaves behind: the tuned config, MLflow records (a child run per trial, the search plot)
and the tables a person reads in the terminal and the Prefect UI."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from tasks.atomic import atomic_write_text
from tasks.records import RunRecord
from tasks.settings import apply_overrides, config_from_dict
from tasks.tuning import TrialOutcome


@dataclass(frozen=True)
class StudySummary:
    study: str
    metric: str
    trials: list[TrialOutcome]  # finished, in trial order
    best: TrialOutcome
    baseline: TrialOutcome | None
    config_path: Path
    seconds: float  # summed over the finished trials, resumes included

    @property
    def gain(self) -> float | None:
        return None if self.baseline is None else self.best.value - self.baseline.value


def best_outcome(trials: list[TrialOutcome]) -> TrialOutcome:
    """The best trial; on a tie the earliest (the baseline first: a change must earn its place)."""
    return max(trials, key=lambda t: (t.value, -t.number))


def default_output(config_path: str | Path) -> Path:
    path = Path(config_path)
    return path.with_name(f"{path.stem}-tuned.yaml")


def write_tuned_config(source: str | Path, applied: list[str], best: TrialOutcome, baseline: TrialOutcome | None,
                       metric: str, study: str, out: Path) -> Path:
    """The source config (its own values, not a resolved dump) with the run's overrides and the best settings."""
    raw = yaml.safe_load(Path(source).read_text()) or {}
    raw = apply_overrides(raw, [*applied, *best.overrides])
    config_from_dict(raw, str(out), best.overrides)
    versus = "" if baseline is None else f" (the config's own settings: {baseline.value:.4f})"
    header = (f"# Written by `ragtune tune` from {source} on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}:\n"
              f"# study {study}, trial {best.number}, validation {metric}@{int(best.metrics['top_k'])} "
              f"{best.value:.4f}{versus}.\n# Settings found: {' '.join(best.overrides)}\n")
    atomic_write_text(out, header + yaml.safe_dump(raw, sort_keys=False))
    return out


def trials_table(trials: list[TrialOutcome]) -> pd.DataFrame:
    """One row per finished trial, best first."""
    rows = [{"trial": t.number, "baseline": t.baseline, **t.params, "top_k": int(t.metrics["top_k"]),
             "objective": t.value, **{k: v for k, v in t.metrics.items() if k not in ("objective", "top_k")},
             "seconds": round(t.seconds, 1)} for t in trials]
    return pd.DataFrame(rows).sort_values("objective", ascending=False, kind="stable") if rows else pd.DataFrame()


def terminal_table(trials: list[TrialOutcome], rows: int = 10) -> str:
    """The best `rows` trials, narrow enough for a terminal."""
    table = trials_table(trials).head(rows)
    columns = ["trial", "baseline", "chunking", "max_tokens", "mode", "rrf_k", "top_k", "objective", "recall_at_k",
               "doc_recall_at_k", "seconds"]
    return table[[c for c in columns if c in table]].to_markdown(index=False, floatfmt=".3f")


def trial_record(outcome: TrialOutcome, study: str) -> RunRecord:
    return RunRecord(tags={"study": study, "trial": str(outcome.number), "baseline": str(outcome.baseline)},
                     params={**outcome.params, "overrides": " ".join(outcome.overrides)},
                     metrics={**outcome.metrics, "trial_seconds": outcome.seconds})


def history_figure(study):
    """Optuna's optimisation history (objective per trial and best so far) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # optuna's matplotlib backend is marked experimental
        axes = plot_optimization_history(study)
    axes.set_title(f"validation objective per trial\n{study.study_name}", fontsize=10)
    axes.figure.set_size_inches(9, 5)
    axes.figure.tight_layout()
    return axes.figure


def study_record(summary: StudySummary, study) -> RunRecord:
    """The tune parent run: best settings and value, the baseline's, the trials table, the plot, the config."""
    metrics = {"best_value": summary.best.value, "trials": float(len(summary.trials)),
               "tuning_seconds": summary.seconds,
               **{f"best_{k}": v for k, v in summary.best.metrics.items() if k != "objective"}}
    if summary.baseline is not None:
        metrics |= {"baseline_value": summary.baseline.value, "gain": summary.gain}
    return RunRecord(
        tags={"study": summary.study, "best_trial": str(summary.best.number)},
        params={"metric": summary.metric, **{f"best_{k}": v for k, v in summary.best.params.items()},
                "tuned_config": str(summary.config_path)},
        metrics=metrics,
        tables={"trials.csv": trials_table(summary.trials)},
        texts={"tuned_config.yaml": Path(summary.config_path).read_text()},
        figures={"tuning/optimization_history.png": lambda: history_figure(study)},
    )


def summary_markdown(summary: StudySummary) -> str:
    """The study for a person: the best settings against the config's own, and the trials, best first."""
    base = summary.baseline
    lines = [f"## Retrieval tuning: {summary.study}",
             f"- validation {summary.metric}@k (k from a fixed passage budget): best **{summary.best.value:.4f}** "
             f"(trial {summary.best.number})" + (f", the config's own settings {base.value:.4f}" if base else ""),
             f"- {len(summary.trials)} trials, {summary.seconds:.0f} s of trials",
             f"- settings found: `{' '.join(summary.best.overrides)}`",
             f"- written to `{summary.config_path}` (run it with `ragtune run --config {summary.config_path}`)", "",
             trials_table(summary.trials).head(10).to_markdown(index=False, floatfmt=".3f")]
    return "\n".join(lines) + "\n"
