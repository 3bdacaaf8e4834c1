"""URL credentials are masked in everything that outlives a run (tasks.redaction), while the run uses them.

Real stores throughout: an MLflow sqlite store and a Prefect server with its database under tmp_path, a
real HTTP server on 127.0.0.1 that sees what the `openai` client sends, and the `ragtune` CLI in-process.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

# Prefect binds its log handlers to the stderr of its first import: import it here, not inside
# CliRunner's temporary streams (as tests/test_cli.py does).
import flows.pipeline  # noqa: F401
from flows.cli import app
from tasks.config_base import ConfigError
from tasks.endpoint import EndpointClient, EndpointError
from tasks.records import RunRecord
from tasks.redaction import HIDDEN_PREFIX, hide_override_secrets, redact, redact_value
from tasks.settings import EndpointConfig, MlflowConfig, config_to_yaml, load_config
from tasks.tracking import log_record, pipeline_record, setup_tracking
from tests.conftest import ROOT

SECRET = "s3cr3t-pw"
CI_CONFIG = ROOT / "configs" / "ci.yaml"
MESSAGES = [{"role": "user", "content": "When does the office open?"}]


@pytest.mark.parametrize(("text", "expected"), [
    ("http://alice:s3cr3t-pw@llm.internal:8000/v1", "http://***:***@llm.internal:8000/v1"),
    ("https://alice:s3cr3t-pw@api.example.com/v1", "https://***:***@api.example.com/v1"),
    ("postgresql://ragtune:s3cr3t-pw@db.internal/mlflow", "postgresql://***:***@db.internal/mlflow"),
    ("postgresql+psycopg2://ragtune:s3cr3t-pw@db.internal:5432/mlflow",
     "postgresql+psycopg2://***:***@db.internal:5432/mlflow"),
    ("https://alice:p%40ss%2Fw%3Ard@host/v1", "https://***:***@host/v1"),  # URL-encoded "@", "/" and ":"
    ("https://alice:p@ss#word@host/v1", "https://***:***@host/v1"),  # unencoded: masked to the last "@"
    ("https://ghp_token123@github.com/org/repo.git", "https://***@github.com/org/repo.git"),  # a token as user
    ("http://${LLM_USER}:${LLM_PASS}@host/v1", "http://${LLM_USER}:${LLM_PASS}@host/v1"),  # references: no secret
    ("http://alice:${LLM_PASS}@host/v1", "http://***:${LLM_PASS}@host/v1"),
    ("chat completion request to http://alice:s3cr3t-pw@127.0.0.1:9/v1/chat/completions (model m) failed; "
     "store s3://bucket/x, judge 'https://bob:hunter2@judge:443/v1'",
     "chat completion request to http://***:***@127.0.0.1:9/v1/chat/completions (model m) failed; "
     "store s3://bucket/x, judge 'https://***:***@judge:443/v1'"),
])
def test_redact_masks_user_and_password_and_keeps_the_rest(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent: a masked text is masked again unchanged


@pytest.mark.parametrize("text", [
    "validation failed: 3 rules broken", "sqlite:///mlruns/mlflow.db", "http://127.0.0.1:8000/v1",
    "mlflow-artifacts:/ragtune-store", "mail ops@example.com about http://host:80/v1 and bob@example.com", "",
])
def test_text_without_url_credentials_is_unchanged(text):
    assert redact(text) == text


def test_redact_value_walks_mappings_lists_and_keys():
    value = {"url": "http://a:s3cr3t-pw@h/v1", "n": 3, "nested": [("https://a:s3cr3t-pw@h",), None],
             "http://a:s3cr3t-pw@h": True}
    assert redact_value(value) == {"url": "http://***:***@h/v1", "n": 3, "nested": [("https://***:***@h",), None],
                                   "http://***:***@h": True}


def _secret_overrides(tmp_path: Path) -> list[str]:
    return [f"generation.endpoint.base_url=http://alice:{SECRET}@127.0.0.1:9/v1", "generation.endpoint.model=m",
            f"evaluation.judge={{base_url: 'https://bob:{SECRET}@judge.example.com/v1', model: j}}",
            f"mlflow.tracking_uri=postgresql://ragtune:{SECRET}@db.internal:5432/mlflow",
            f"scale.store=https://carol:{SECRET}@store.example.com/artifacts",
            f"mlflow.artifact_location={tmp_path / 'artifacts'}"]


def test_config_to_yaml_masks_every_url_credential_and_the_config_keeps_them(tmp_path):
    cfg = load_config(CI_CONFIG, _secret_overrides(tmp_path))
    text = config_to_yaml(cfg)
    assert SECRET not in text
    dumped = yaml.safe_load(text)
    assert dumped["generation"]["endpoint"]["base_url"] == "http://***:***@127.0.0.1:9/v1"
    assert dumped["evaluation"]["judge"]["base_url"] == "https://***:***@judge.example.com/v1"
    assert dumped["mlflow"]["tracking_uri"] == "postgresql://***:***@db.internal:5432/mlflow"
    assert dumped["scale"]["store"] == "https://***:***@store.example.com/artifacts"
    assert cfg.generation.endpoint.base_url == f"http://alice:{SECRET}@127.0.0.1:9/v1"  # what the run uses


def _bytes_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _holding(files: dict[Path, bytes], needle: str) -> list[Path]:
    return [p for p, data in files.items() if needle.encode() in data]


def test_log_record_writes_no_credential_to_a_real_mlflow_store(tmp_path):
    store = tmp_path / "mlruns"
    setup_tracking(MlflowConfig(tracking_uri=f"sqlite:///{store}/mlflow.db", artifact_location=store / "artifacts",
                                experiment="redaction"))
    cfg = load_config(CI_CONFIG, _secret_overrides(tmp_path))
    url = cfg.generation.endpoint.base_url
    record = RunRecord(tags={"endpoint": url}, params={"endpoint": url, "top_k": 2},
                       texts={"notes/failure.md": f"request to {url}/chat/completions failed"},
                       dicts={"endpoint.json": {"endpoints": [url, cfg.evaluation.judge.base_url]}},
                       tables={"answers.csv": pd.DataFrame({"endpoint": [url], "f1": [0.5]})})
    with mlflow.start_run() as run:
        log_record(pipeline_record(cfg, str(CI_CONFIG)))
        log_record(record)
    files = _bytes_under(store)
    assert _holding(files, SECRET) == []
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.tags["endpoint"] == logged.params["endpoint"] == "http://***:***@127.0.0.1:9/v1"
    config_artifact = yaml.safe_load(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml"))
    assert config_artifact["mlflow"]["tracking_uri"] == "postgresql://***:***@db.internal:5432/mlflow"
    table = pd.read_csv(Path(run.info.artifact_uri.removeprefix("file://")) / "tables" / "answers.csv")
    assert table.to_dict("list") == {"endpoint": ["http://***:***@127.0.0.1:9/v1"], "f1": [0.5]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_endpoint_error_names_the_url_without_its_credential():
    port = _free_port()  # closed again: nothing listens there
    cfg = EndpointConfig(base_url=f"http://alice:{SECRET}@127.0.0.1:{port}/v1", model="m", timeout_s=2,
                         max_retries=0)
    with pytest.raises(EndpointError) as caught:
        EndpointClient(cfg).complete(MESSAGES, max_tokens=4, stop=[])
    message = str(caught.value)
    assert SECRET not in message
    assert f"http://***:***@127.0.0.1:{port}/v1/chat/completions (model m) failed: could not connect" in message


class BasicAuthRecorder:
    """A minimal OpenAI-compatible server on 127.0.0.1 that records the Authorization header of each request."""

    def __init__(self):
        self.authorizations: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                owner.authorizations.append(self.headers.get("Authorization", ""))
                body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": "8 am"}}],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def basic(self, user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def recorder() -> Iterator[BasicAuthRecorder]:
    server = BasicAuthRecorder()
    yield server
    server.server.shutdown()


@pytest.fixture
def hidden_env() -> Iterator[None]:
    """Removes the variables hide_override_secrets writes into this process's environment."""
    before = set(os.environ)
    yield
    for name in set(os.environ) - before:
        if name.startswith(HIDDEN_PREFIX):
            del os.environ[name]


def test_env_references_in_base_url_are_expanded_only_when_the_client_is_created(recorder, monkeypatch):
    monkeypatch.setenv("LLM_USER", "alice")
    monkeypatch.setenv("LLM_PASS", SECRET)
    cfg = EndpointConfig(base_url=f"http://${{LLM_USER}}:${{LLM_PASS}}@127.0.0.1:{recorder.port}/v1", model="m")
    assert EndpointClient(cfg).complete(MESSAGES, max_tokens=4, stop=[]).text == "8 am"
    assert recorder.authorizations == [recorder.basic("alice", SECRET)]
    bundled = yaml.safe_load(config_to_yaml(load_config(CI_CONFIG, [f"generation.endpoint.base_url={cfg.base_url}",
                                                                    "generation.endpoint.model=m"])))
    assert bundled["generation"]["endpoint"]["base_url"] == cfg.base_url  # a served model expands them itself
    monkeypatch.delenv("LLM_PASS")
    with pytest.raises(EndpointError, match="base_url: .*environment variable.s. LLM_PASS named in it are not set"):
        EndpointClient(cfg)


def test_a_bundled_config_with_a_masked_credential_says_how_to_give_it():
    masked = EndpointConfig(base_url="http://***:***@127.0.0.1:9/v1", model="m")
    with pytest.raises(EndpointError, match=r"credentials were masked .* \$\{VARIABLE\} references"):
        EndpointClient(masked)


def test_hidden_overrides_carry_no_secret_and_load_the_same_config(recorder, hidden_env):
    original = [f"generation.endpoint.base_url=http://alice:{SECRET}@127.0.0.1:{recorder.port}/v1",
                "generation.endpoint.model=m",
                f"evaluation.judge={{base_url: 'https://bob:{SECRET}@judge/v1', model: j}}", "seed=7"]
    hidden = hide_override_secrets(original)
    assert not any(SECRET in text for text in hidden)
    assert hidden[0] == ("generation.endpoint.base_url=http://${RAGTUNE_SECRET_GENERATION_ENDPOINT_BASE_URL_USER}:"
                         f"${{RAGTUNE_SECRET_GENERATION_ENDPOINT_BASE_URL_PASSWORD}}@127.0.0.1:{recorder.port}/v1")
    assert hidden[2] == ('evaluation.judge={"base_url": "https://${RAGTUNE_SECRET_EVALUATION_JUDGE_USER}:'
                         '${RAGTUNE_SECRET_EVALUATION_JUDGE_PASSWORD}@judge/v1", "model": "j"}')
    assert hidden[1] == original[1] and hidden[3] == original[3]
    assert load_config(CI_CONFIG, hidden) == load_config(CI_CONFIG, original)
    cfg = load_config(CI_CONFIG, hidden)
    EndpointClient(cfg.generation.endpoint).complete(MESSAGES, max_tokens=4, stop=[])
    assert recorder.authorizations == [recorder.basic("alice", SECRET)]


def test_a_hidden_override_in_another_process_fails_naming_the_variable():
    hidden = hide_override_secrets([f"generation.endpoint.base_url=http://alice:{SECRET}@h/v1"], environ={})
    with pytest.raises(ConfigError, match="RAGTUNE_SECRET_GENERATION_ENDPOINT_BASE_URL_USER is not set"):
        load_config(CI_CONFIG, [*hidden, "generation.endpoint.model=m"])


@pytest.mark.parametrize("override", [
    f"http://alice:{SECRET}@host/v1",  # no key
    f"generation.endpoint.base_url=[http://alice:{SECRET}@host/v1",  # not YAML
    f"seed.x=http://alice:{SECRET}@host/v1",  # seed is not a section
    f"evaluation.candidates=[http://alice:{SECRET}@host/v1]",  # pydantic's message names the unknown candidate
])
def test_config_errors_do_not_echo_a_credential(override):
    with pytest.raises(ConfigError) as caught:
        load_config(CI_CONFIG, [override])
    assert SECRET not in str(caught.value)
    assert "http://***:***@host/v1" in str(caught.value)


@pytest.fixture
def prefect_home(tmp_path) -> Iterator[Path]:
    """PREFECT_HOME under tmp_path, with a Prefect server of this test's own whose sqlite database lives there
    (set up like prefect_test_harness, which would put its database elsewhere)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = tmp_path / "prefect"
    home.mkdir()
    workers = (APILogWorker, EventsWorker)
    for worker in workers:  # a worker started by an earlier test would send to that test's server
        worker.drain_all(timeout=30)
    with temporary_settings({PREFECT_HOME: home}):
        server = SubprocessASGIServer(port=_free_port())
        prior = SubprocessASGIServer._instances.get(None)
        SubprocessASGIServer._instances[None] = server
        try:
            server.start(timeout=120)
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield home
                for worker in workers:  # what the flow logged reaches the database before the test reads it
                    worker.drain_all(timeout=30)
        finally:
            server.stop()
            if prior is None:
                SubprocessASGIServer._instances.pop(None, None)
            else:
                SubprocessASGIServer._instances[None] = prior


def test_the_validate_flow_persists_no_credential_given_with_set(tmp_path, prefect_home, hidden_env):
    raw = yaml.safe_load(CI_CONFIG.read_text())
    raw.update(model_cache=str(ROOT / ".cache" / "models"), cache_root=str(tmp_path / "cache"),
               mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                       "artifact_location": str(tmp_path / "mlruns" / "artifacts"), "experiment": "redaction-e2e"})
    raw["data"]["path"] = str(ROOT / "data" / "demo")
    raw["index"]["root"], raw["finetune"]["output_root"] = str(tmp_path / "index"), str(tmp_path / "adapters")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    result = CliRunner().invoke(app, ["validate", "--config", str(config),
                                      "--set", f"generation.endpoint.base_url=http://alice:{SECRET}@127.0.0.1:9/v1",
                                      "--set", "generation.endpoint.model=m"])
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=30)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    mlflow_files, prefect_files = _bytes_under(tmp_path / "mlruns"), _bytes_under(prefect_home)
    assert _holding({**mlflow_files, **prefect_files, **_bytes_under(tmp_path / "cache")}, SECRET) == []
    # The stores checked are the ones the run wrote: the masked config, the flow's parameters and its logs.
    assert _holding(mlflow_files, "base_url: http://***:***@127.0.0.1:9/v1")
    assert _holding(prefect_files, "${RAGTUNE_SECRET_GENERATION_ENDPOINT_BASE_URL_PASSWORD}@127.0.0.1:9/v1")
    assert _holding(prefect_files, "documents, ")  # the load-data task's log line
