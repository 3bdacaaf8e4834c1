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
    kind: str  # "retrieval", or the candidate whose adapter the study tunes
    study: str
    metric: str  # what the objective is, for a person
    trials: list[TrialOutcome]  # finished, in trial order
    best: TrialOutcome | None  # None: no trial finished within the budget
    baseline: TrialOutcome | None
    seconds: float  # summed over the finished and stopped trials, resumes included
    space: str  # what the study searched, for the report
    stopped: int = 0  # trials pruned or stopped by the budget

    @property
    def gain(self) -> float | None:
        return None if self.baseline is None or self.best is None else self.best.value - self.baseline.value

    @property
    def overrides(self) -> list[str]:
        """What the tuned config takes from this study: the best trial's settings, exactly as it was measured
        (the config's own values when they won)."""
        return self.best.overrides if self.best is not None else []


def best_outcome(trials: list[TrialOutcome]) -> TrialOutcome:
    """The best trial; on a tie the earliest (the baseline first: a change must earn its place)."""
    return max(trials, key=lambda t: (t.value, -t.number))


def default_output(config_path: str | Path) -> Path:
    path = Path(config_path)
    return path.with_name(f"{path.stem}-tuned.yaml")


def write_tuned_config(source: str | Path, applied: list[str], studies: list[StudySummary], out: Path) -> Path:
    """The source config (its own values, not a resolved dump) with the run's overrides and each study's best
    settings, behind a header that says where each came from."""
    found = [o for s in studies for o in s.overrides]
    raw = yaml.safe_load(Path(source).read_text()) or {}
    raw = apply_overrides(raw, [*applied, *found])
    config_from_dict(raw, str(out), found)
    lines = [f"# Written by `ragtune tune` from {source} on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}."]
    for s in studies:
        lines.append(f"# {study_line(s)}")
        if s.overrides:
            lines.append(f"#   settings found: {' '.join(s.overrides)}")
    atomic_write_text(out, "\n".join(lines) + "\n" + yaml.safe_dump(raw, sort_keys=False))
    return out


def study_line(s: StudySummary) -> str:
    """One line per study: what won, by how much, in how many trials and seconds."""
    if s.best is None:
        return f"{s.kind}: no trial finished within the budget (study {s.study})"
    won = "the config's own settings" if s.best.baseline else f"trial {s.best.number}"
    versus = f" (the config's own settings {s.baseline.value:.4f})" if s.baseline and not s.best.baseline else ""
    stopped = f", {s.stopped} stopped early" if s.stopped else ""
    trials = f"{len(s.trials)} trial{'s' if len(s.trials) != 1 else ''} finished"
    return (f"{s.kind}: {won}, validation {s.metric} {s.best.value:.4f}{versus}; {trials}{stopped}, "
            f"{s.seconds:.0f} s (study {s.study})")


def trials_table(trials: list[TrialOutcome]) -> pd.DataFrame:
    """One row per finished trial, best first."""
    rows = [{"trial": t.number, "baseline": t.baseline, **t.params, "objective": t.value,
             **{k: v for k, v in t.metrics.items() if k != "objective"}, "seconds": round(t.seconds, 1)}
            for t in trials]
    return pd.DataFrame(rows).sort_values("objective", ascending=False, kind="stable") if rows else pd.DataFrame()


SHOWN_METRICS = ("top_k", "recall_at_k", "doc_recall_at_k", "f1", "exact_match", "eval_loss")


def terminal_table(trials: list[TrialOutcome], rows: int = 10) -> str:
    """The best `rows` trials, narrow enough for a terminal."""
    table = trials_table(trials).head(rows)
    params = [c for t in trials for c in t.params]
    columns = ["trial", "baseline", *dict.fromkeys(params), "objective", *SHOWN_METRICS, "seconds"]
    return table[[c for c in columns if c in table]].to_markdown(index=False, floatfmt=".4g")


def trial_record(outcome: TrialOutcome, study: str) -> RunRecord:
    return RunRecord(tags={"study": study, "trial": str(outcome.number), "baseline": str(outcome.baseline),
                           "stopped": outcome.stopped or "no"},
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
    """A study in the tune parent run, under its kind: best and baseline values, trials table and plot."""
    kind = summary.kind
    metrics = {f"{kind}.trials": float(len(summary.trials)), f"{kind}.stopped_trials": float(summary.stopped),
               f"{kind}.tuning_seconds": summary.seconds}
    params = {f"{kind}.metric": summary.metric, f"{kind}.space": summary.space[:500]}
    if summary.best is not None:
        metrics |= {f"{kind}.best_value": summary.best.value,
                    **{f"{kind}.best_{k}": v for k, v in summary.best.metrics.items() if k != "objective"}}
        params |= {f"{kind}.best_{k}": v for k, v in summary.best.params.items()}
    if summary.baseline is not None and summary.best is not None:
        metrics |= {f"{kind}.baseline_value": summary.baseline.value, f"{kind}.gain": summary.gain}
    record = RunRecord(tags={f"{kind}.study": summary.study}, params=params, metrics=metrics,
                       tables={f"trials_{kind}.csv": trials_table(summary.trials)})
    if summary.trials:
        record.figures[f"tuning/{kind}_history.png"] = lambda: history_figure(study)
    return record


def summary_markdown(studies: list[StudySummary], config_path: Path) -> str:
    """The search for a person: per study what it searched, what won against the config's own settings, and its
    best trials."""
    lines = ["## Tuning (validation split only)", "", "| study | objective | trials (+ stopped) | seconds | best | "
             "the config's own | gain |", "|---|---|---:|---:|---:|---:|---:|"]
    for s in studies:
        best = f"{s.best.value:.4f}" if s.best else "none finished"
        base = f"{s.baseline.value:.4f}" if s.baseline else "n/a"
        gain = f"{s.gain:+.4f}" if s.gain is not None else "n/a"
        lines.append(f"| {s.kind} | {s.metric} | {len(s.trials)} (+{s.stopped}) | "
                     f"{s.seconds:.0f} | {best} | {base} | {gain} |")
    lines += ["", f"Written to `{config_path}`: run it with `ragtune run --config {config_path}`.", ""]
    for s in studies:
        lines += [f"### {s.kind}", f"- searched: {s.space}", f"- {study_line(s)}",
                  f"- settings found: `{' '.join(s.overrides) or 'none'}`", "",
                  terminal_table(s.trials), ""]
    return "\n".join(lines) + "\n"
