"""The deployments are defined once, in prefect.yaml; `ragtune serve` serves exactly those."""

import yaml

from flows.deployments import PREFECT_YAML, runner_deployments
from tests.conftest import ROOT


def test_serve_builds_the_deployments_of_prefect_yaml():
    specs = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    built = runner_deployments()
    assert PREFECT_YAML == ROOT / "prefect.yaml"
    assert [d.name for d in built] == [s["name"] for s in specs]
    for deployment, spec in zip(built, specs, strict=True):
        assert deployment.parameters == spec["parameters"]
        assert deployment.description == spec["description"]
        assert [s.schedule.cron for s in deployment.schedules] == [s["cron"] for s in spec.get("schedules", [])]
        assert deployment.entrypoint.endswith(spec["entrypoint"].split(":")[1])
    assert {d.name: d.flow_name for d in built} == {"nightly-retrain": "retrain", "index-refresh": "index",
                                                    "on-demand-evaluation": "evaluate"}


def test_serve_config_replaces_every_deployments_config():
    built = runner_deployments(config="configs/ci.yaml")
    assert {d.parameters["config"] for d in built} == {"configs/ci.yaml"}
