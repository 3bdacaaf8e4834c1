"""Fan-out of the stages that do not depend on each other (the finetunes, the candidate evaluations) through
prefect-dask's DaskTaskRunner, configured by `scale.dask`; without it they run one after the other in
this process. Either way a stage is the same Prefect task with the same inputs, so the results are the
same: only where and when it runs changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect import Task

from tasks.scale_settings import DaskConfig


@dataclass(frozen=True)
class Done:
    """A stage that already ran here; looks like a future to the code that waits for it."""

    value: Any

    def result(self) -> Any:
        return self.value


class Fanout:
    """Submits stages to a task runner, or runs them at once when there is none."""

    def __init__(self, runner=None):
        self.runner = runner

    def submit(self, task: Task, **parameters: Any):
        """A future of `task(**parameters)`; parameters may be futures of earlier stages."""
        if self.runner is None:
            return Done(task(**{k: v.result() if isinstance(v, Done) else v for k, v in parameters.items()}))
        return self.runner.submit(task, parameters=parameters)


def dask_runner_options(cfg: DaskConfig) -> dict[str, Any]:
    """DaskTaskRunner's arguments: the configured scheduler, or a LocalCluster on 127.0.0.1 whose workers each
    run one task with `threads_per_worker` torch threads (so workers do not fight over the cores)."""
    if cfg.address:
        return {"address": cfg.address}
    threads = str(cfg.threads_per_worker)
    return {"cluster_kwargs": {"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                               "host": "127.0.0.1", "dashboard_address": None,
                               "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}}}


@contextmanager
def fanout(cfg: DaskConfig) -> Iterator[Fanout]:
    if not cfg.enabled:
        yield Fanout()
        return
    from prefect_dask import DaskTaskRunner

    with DaskTaskRunner(**dask_runner_options(cfg)) as runner:
        yield Fanout(runner)
