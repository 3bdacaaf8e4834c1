"""flows.fanout: stages submitted to a Dask LocalCluster run in other processes and give exactly what the
sequential path gives (here: LoRA adapters, trained on the tiny model, weight for weight)."""

from __future__ import annotations

import os

import pytest
from prefect import flow, task

from flows.fanout import Done, Fanout, dask_runner_options, fanout
from tasks import finetuning
from tasks.scale_settings import DaskConfig
from tests.test_finetuning import GEN, QA, QA6, _assert_same_adapter, _cfg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@task
def train(model_dir: str, out: str, seed: int) -> tuple[finetuning.FinetuneResult, int]:
    from pathlib import Path

    result = finetuning.finetune("closed_book", model_dir, QA6, QA, "fp", _cfg(Path(out)), GEN, seed=seed,
                                 progress=False)
    return result, os.getpid()


@flow
def train_two(model_dir: str, root: str, enabled: bool) -> list[tuple[finetuning.FinetuneResult, int]]:
    with fanout(DaskConfig(enabled=enabled, workers=2)) as parallel:
        futures = [parallel.submit(train, model_dir=model_dir, out=f"{root}/seed-{seed}", seed=seed) for seed in (3, 4)]
        return [f.result() for f in futures]


def test_dask_fanout_trains_the_same_adapters_as_the_sequential_path(harness, tiny_model_dir, tmp_path):
    sequential = train_two(tiny_model_dir, str(tmp_path / "sequential"), enabled=False)
    parallel = train_two(tiny_model_dir, str(tmp_path / "dask"), enabled=True)
    assert {pid for _, pid in sequential} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in parallel}  # the Dask workers trained them
    for (one, _), (other, _) in zip(sequential, parallel, strict=True):
        assert one.adapter_dir != other.adapter_dir and one.eval_loss == other.eval_loss
        _assert_same_adapter(one, other)


def test_without_dask_a_stage_runs_at_once_and_futures_are_unwrapped():
    ran = []

    def stage(x: int, y: int) -> int:
        ran.append((x, y))
        return x + y

    first = Fanout().submit(stage, x=1, y=2)
    assert ran == [(1, 2)] and first.result() == 3
    assert Fanout().submit(stage, x=first, y=Done(4)).result() == 7


def test_dask_options_bind_the_local_cluster_to_loopback_or_use_the_configured_scheduler():
    local = dask_runner_options(DaskConfig(enabled=True, workers=3, threads_per_worker=2))["cluster_kwargs"]
    assert local["host"] == "127.0.0.1" and local["n_workers"] == 3 and local["env"]["OMP_NUM_THREADS"] == "2"
    assert dask_runner_options(DaskConfig(enabled=True, address="tcp://10.0.0.5:8786")) == {
        "address": "tcp://10.0.0.5:8786"}
