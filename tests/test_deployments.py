"""The deployments are defined once, in prefect.yaml; `ragtune serve` serves exactly those, under names of
its own, and `ragtune deploy` deploys them (tests/test_prefect_server.py runs that on a real server)."""

import yaml

from flows.deployments import PREFECT_YAML, SERVED_SUFFIX, deployment_specs, runner_deployments, work_pool
from tests.conftest import ROOT


def _seconds(schedule) -> float | None:
    return schedule.interval.total_seconds() if hasattr(schedule, "interval") else None


def test_serve_builds_the_deployments_of_prefect_yaml_under_served_names():
    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    built = runner_deployments()
    assert PREFECT_YAML == ROOT / "prefect.yaml"
    assert [d.name for d in built] == [s["name"] + SERVED_SUFFIX for s in specs]
    for deployment, spec in zip(built, specs, strict=True):
        assert deployment.description == spec["description"]
        assert [getattr(s.schedule, "cron", None) for s in deployment.schedules] == [
            s.get("cron") for s in spec.get("schedules") or []]
        assert [_seconds(s.schedule) for s in deployment.schedules] == [
            s.get("interval") for s in spec.get("schedules") or []]
        assert deployment.entrypoint.endswith(spec["entrypoint"].split(":")[1])
    assert {d.name: d.flow_name for d in built} == {
        "nightly-retrain-served": "retrain", "data-change-trigger-served": "watch-data",
        "index-refresh-served": "index", "on-demand-evaluation-served": "evaluate",
        "daily-ab-report-served": "ab-report", "on-demand-tuning-served": "tune"}


def test_a_served_trigger_starts_the_served_retraining():
    trigger = next(d for d in runner_deployments() if d.flow_name == "watch-data")
    assert trigger.parameters["deployment"] == "retrain/nightly-retrain" + SERVED_SUFFIX
    spec = next(s for s in deployment_specs() if s["name"] == "data-change-trigger")
    assert spec["parameters"]["deployment"] == "retrain/nightly-retrain"  # deployed: the deployed one


def test_serve_config_replaces_every_deployments_config():
    built = runner_deployments(config="configs/ci.yaml")
    assert {d.parameters["config"] for d in built} == {"configs/ci.yaml"}


def test_one_work_pool_and_no_pull_section_so_the_deploy_directory_is_the_working_directory():
    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert "pull" not in raw
    assert work_pool() == "ragtune-process"
