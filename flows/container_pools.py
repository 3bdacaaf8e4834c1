"""ragtune's deployments on Docker and Kubernetes work pools: their job variables, and the jobs they give.

Why this module: no machine ragtune is developed on has a Docker engine or a Kubernetes cluster, so the part of a
container deployment that can be checked without one is checked from here (tests/test_container.py): the job
variables of deploy/job_variables.yaml, the job a worker would start from them, rendered the way Prefect's workers
render it from the pool type's default base job template (Prefect's own bundled worker metadata, read offline with
Prefect's own templating), and the `prefect deploy` input that carries the variables. Nothing here calls a Prefect
server or a container engine.
"""

from __future__ import annotations

import copy
import functools
import json
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from prefect.utilities.templating import apply_values, find_placeholders
from prefect.workers.base import BaseJobConfiguration

ROOT = Path(__file__).resolve().parent.parent
JOB_VARIABLES = ROOT / "deploy" / "job_variables.yaml"
POOL_TYPES = ("docker", "kubernetes")
# Prefect's copy of the prefect-collection-registry view a server falls back to offline when a pool is created
# (`prefect work-pool create --type docker` gets its default base job template from there).
WORKER_METADATA = "server/api/collections_data/views/aggregate-worker-metadata.json"
_COLLECTIONS = {"docker": "prefect-docker", "kubernetes": "prefect-kubernetes"}
SET_WORKING_DIRECTORY = "prefect.deployments.steps.set_working_directory"


def _checked(pool_type: str) -> str:
    if pool_type not in POOL_TYPES:
        raise ValueError(f"unknown work-pool type {pool_type!r}: use one of {', '.join(POOL_TYPES)}")
    return pool_type


def worker_metadata_path() -> Path:
    """Where the installed Prefect keeps its bundled worker metadata (the default base job templates)."""
    return Path(str(files("prefect").joinpath(WORKER_METADATA)))


@functools.cache
def _worker_metadata() -> dict[str, Any]:
    return json.loads(worker_metadata_path().read_text())


def base_job_template(pool_type: str) -> dict[str, Any]:
    """The default base job template (`job_configuration` + `variables` schema) of a pool type, as Prefect ships it."""
    worker = _worker_metadata()[_COLLECTIONS[_checked(pool_type)]][pool_type]
    return copy.deepcopy(worker["default_base_job_configuration"])


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _resolved_env(env: dict[str, Any]) -> dict[str, str]:
    """The env with its `{{ $VAR }}` placeholders taken from this process's environment (Prefect's templating);
    a variable whose placeholder names an unset one is left out rather than set to an empty string."""
    resolved: dict[str, str] = {}
    for key, value in env.items():
        text = str(value)
        rendered = apply_values(text, {}, remove_notset=True)
        if find_placeholders(text) and not rendered:
            continue
        resolved[key] = str(rendered)
    return resolved


def job_variables(pool_type: str, image: str | None = None, path: Path = JOB_VARIABLES) -> dict[str, Any]:
    """The job variables for a pool type from deploy/job_variables.yaml; `image` replaces the file's image."""
    variables = copy.deepcopy(_load(path)[_checked(pool_type)])
    if image:
        variables["image"] = image
    if isinstance(variables.get("env"), dict):
        variables["env"] = _resolved_env(variables["env"])
    return variables


def working_dir(path: Path = JOB_VARIABLES) -> str:
    """The image's WORKDIR, where the deployments' pull step sets the working directory."""
    return str(_load(path)["working_dir"])


def pull_steps(path: Path = JOB_VARIABLES) -> list[dict[str, Any]]:
    """The pull section for container deployments: the flows' code, configs and data are in the image's WORKDIR.
    (Without one, `prefect deploy --no-prompt` records /opt/prefect for a deployment with its own image.)"""
    return [{SET_WORKING_DIRECTORY: {"directory": working_dir(path)}}]


def _kubernetes_container(job: dict[str, Any], command: str) -> None:
    """What the Kubernetes worker does to the rendered manifest before it creates the Job (prefect-kubernetes:
    `_populate_env_in_manifest`, `_populate_command_if_not_present`): env as name/value entries, args as a list."""
    container = job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    entries = [{"name": key, "value": value} for key, value in (job.get("env") or {}).items()]
    existing = container.get("env")
    container["env"] = [*entries, *existing] if isinstance(existing, list) else entries
    args = container.get("args")
    container["args"] = shlex.split(command) if args is None else shlex.split(args) if isinstance(args, str) else args


def render_job(pool_type: str, image: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job configuration a worker of this pool type would start for one of ragtune's deployments.

    As `BaseJobConfiguration.from_template_and_values` does: the template's variable defaults, overlaid by our job
    variables (and `extra`, e.g. a flow run's own; its env merges into ours), applied to the template's
    `job_configuration` with Prefect's `apply_values`. Then the flow-run command a worker sets when the job has
    none (`prefect flow-run execute`), and for Kubernetes the manifest's env entries and args. Block and Prefect
    variable references are not resolved (that needs a server; deploy/job_variables.yaml has none), and the
    Prefect settings a worker adds to env (PREFECT_API_URL, ...) are not added.
    """
    template = base_job_template(pool_type)
    ours = job_variables(pool_type, image)
    for key, value in (extra or {}).items():
        ours[key] = {**ours.get("env", {}), **value} if key == "env" and isinstance(value, dict) else value
    configuration = template["job_configuration"]
    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"].get("properties", {}))
    if variables.get("env"):
        base_env = configuration.get("env")
        configuration["env"] = base_env | variables["env"] if isinstance(base_env, dict) else variables["env"]
    variables.update(ours)
    if isinstance(configuration.get("env"), dict) and variables.get("env"):
        configuration["env"] = configuration["env"] | variables["env"]
    job = apply_values(configuration, variables)
    command = job.get("command") or BaseJobConfiguration._base_flow_run_command()
    job["command"] = command
    if pool_type == "kubernetes":
        _kubernetes_container(job, command)
    return job


def _job_variable(key: str, value: Any) -> str:
    """One `--job-variable` value as `prefect deploy` parses it (prefect/cli/deploy/_config.py `_extract_variable`):
    `key=value` keeps the value a string, so anything else goes as a JSON object. That parser splits on the first
    `=` before it tries JSON, so each `=` in the JSON becomes its JSON escape (a `=` only occurs inside strings)."""
    if isinstance(value, str):
        return f"{key}={value}"
    return json.dumps({key: value}, separators=(",", ":")).replace("=", "\\u003d")


def deploy_args(pool_type: str, image: str | None = None) -> list[str]:
    """`prefect deploy` arguments that give a deployment these job variables: `--job-variable key=value` for
    strings, `--job-variable '{"key": ...}'` (JSON) for the rest.

    Prefect applies them only when one deployment is deployed (`prefect deploy --name FLOW/DEPLOYMENT ...`): with
    `--all` (several deployments) it ignores every CLI option, `--pool` and `--job-variable` included. To deploy all
    of prefect.yaml's deployments at once, write `prefect_yaml_for_pool(...)` to a file and pass `--prefect-file`.
    Either way the deployments need `pull_steps()`, which no CLI flag sets.
    """
    args: list[str] = []
    for key, value in job_variables(pool_type, image).items():
        args += ["--job-variable", _job_variable(key, value)]
    return args


def prefect_yaml_for_pool(raw: dict[str, Any], pool_type: str, pool: str, image: str | None = None) -> dict[str, Any]:
    """A copy of prefect.yaml's content (`raw`) whose deployments all run on the work pool `pool` of `pool_type`
    with these job variables, from the image's working directory."""
    variables = job_variables(pool_type, image)
    spec = copy.deepcopy(raw)
    for deployment in spec["deployments"]:
        deployment["work_pool"] = {"name": pool, "job_variables": copy.deepcopy(variables)}
        deployment.pop("pull", None)
    spec["pull"] = pull_steps()
    return spec
