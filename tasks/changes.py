"""What a run recomputed and what it reused, in one line a person reads in the terminal, the Prefect
log and the MLflow parent run (tag `what_changed`): a run with nothing changed says so."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.finetuning import TrainedAdapter
from tasks.indexing import IndexBuild
from tasks.records import RunRecord


@dataclass(frozen=True)
class StageWork:
    stage: str  # as the Prefect task run is named: validate, index, finetune[raft], evaluate[hybrid]
    reused: bool
    detail: str = ""  # what was redone, when it says more than the stage's name


def stage_work(validation_reused: bool, index: IndexBuild | None, adapters: dict[str, TrainedAdapter],
               evaluations: dict[str, bool]) -> list[StageWork]:
    """One entry per stage this run ran; `evaluations` maps each candidate to whether its evaluation was reused."""
    work = [StageWork("validate", validation_reused)]
    if index is not None:
        work.append(StageWork("index", index.reused, "" if index.reused else
                              f"{index.embedded} chunks embedded, {index.reused_vectors} reused, "
                              f"{index.removed} removed"))
    work += [StageWork(f"finetune[{mode}]", a.result.reused) for mode, a in adapters.items()]
    work += [StageWork(f"evaluate[{name}]", reused) for name, reused in evaluations.items()]
    return work


def describe(work: list[StageWork], registered: str | None) -> str:
    """`registered`: the model version this run registered, or None when it registered nothing."""
    redone = [f"{w.stage} ({w.detail})" if w.detail else w.stage for w in work if not w.reused]
    reused = [w.stage for w in work if w.reused]
    registration = f"registered version {registered}" if registered else "no model version registered"
    if not redone:
        return f"nothing changed: every stage reused its earlier result ({', '.join(reused)}); {registration}"
    return (f"recomputed {', '.join(redone)}; reused {', '.join(reused) or 'nothing'}; {registration}")


def changes_record(work: list[StageWork], registered: str | None) -> RunRecord:
    """On the parent run: the line above, and counts to sort or filter runs by."""
    return RunRecord(tags={"what_changed": describe(work, registered)},
                     metrics={"stages_recomputed": float(sum(not w.reused for w in work)),
                              "stages_reused": float(sum(w.reused for w in work))})
