"""The catalogue of bad inputs (tests/bad_inputs/cases.yaml): each mistake a user makes in data, configs, overrides,
model sources, endpoints or the registry must end in exit status 2 with one `error:` line that names the file, the
record, the rule and the config key that would accept the input, no traceback, the message said once, no Prefect
error noise, and nothing indexed, trained or registered.

The cases run in this one process (typer's CliRunner; one temporary Prefect server for all); what loggers write
to the process's stderr is captured with capfd. Three cases also run as real `ragtune` processes.
`.venv/bin/python tests/bad_inputs/grade.py` prints the same grades as a table.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

# Prefect configures its log handlers at its first import: do it here, not inside CliRunner's temporary streams.
import flows.pipeline  # noqa: F401
from tests.bad_inputs.build import BUILDERS
from tests.bad_inputs.catalogue import HERE, Case, Workspace, case_config, empty_mlflow_store, load_cases, prepare
from tests.bad_inputs.grading import Outcome, grade, run_in_process, run_subprocess, show, side_effects

CASES = load_cases()
MINIMUM_PER_KIND = {"table": 12, "squad": 10, "hf": 3, "config": 12, "model": 5}
MINIMUM_CASES = 45
REAL_PROCESS_CASES = ("table-duplicate-qa-id", "squad-answer-without-text", "override-malformed-yaml")


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Path:
    return empty_mlflow_store(tmp_path_factory.mktemp("mlflow") / "empty-mlflow.db")


@pytest.fixture(scope="module")
def prefect_server():
    """One temporary Prefect server for every in-process case (a user's `ragtune` starts one per command), stopped
    with this module while the test streams are still open."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def timings(request) -> dict[str, float]:
    """Seconds per in-process case; the total is reported at the end of the module."""
    seconds: dict[str, float] = {}
    yield seconds
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if seconds and reporter is not None and capture is not None:
        slowest = sorted(seconds.items(), key=lambda item: -item[1])[:3]
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\nbad-input catalogue: {len(seconds)} cases in {sum(seconds.values()):.0f} s in one "
                                f"process (slowest: {', '.join(f'{c} {s:.1f} s' for c, s in slowest)})")


def test_the_catalogue_covers_every_kind_of_mistake():
    kinds = Counter(case.kind for case in CASES)
    assert len(CASES) >= MINIMUM_CASES
    assert all(kinds[kind] >= n for kind, n in MINIMUM_PER_KIND.items()), kinds
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        assert case.about and case.args, case.id
        assert all((HERE / source).exists() for source in case.data.get("copy", {}).values()), case.id
        assert set(case.data.get("build", [])) <= set(BUILDERS), case.id


@pytest.mark.parametrize("source", ["tables", "csv", "squad.json"])
def test_the_base_data_passes_validation(source, tmp_path):
    """Each case breaks the valid base data in one way, so that it fails for its own mistake only."""
    from tasks.data_loading import load_dataset
    from tasks.settings import config_from_dict
    from tasks.validation import validate_dataset

    cfg = config_from_dict(case_config(Workspace(tmp_path)))
    dataset = load_dataset(cfg.data, HERE / "base" / source)
    report = validate_dataset(dataset.documents, dataset.qa, cfg.validation, dataset.source)
    assert report.success, report.to_markdown()
    assert len(dataset.qa) == 20 and set(dataset.qa["split"]) == {"train", "validation", "test"}


def _outcome(stdout: str, exit_code: int = 2, fd2: str = "", side_effects: list[str] | None = None) -> Outcome:
    return Outcome(exit_code, {"stdout": stdout, "stderr": "", "fd1": "", "fd2": fd2}, 0.1, side_effects or [])


@pytest.mark.parametrize(("outcome", "expected"), [
    (_outcome("error: {data}/qa.jsonl line 3:\n not valid JSON\n"), "good"),
    (_outcome("error: {data}/qa.jsonl: not valid JSON\n"), "weak"),  # no line
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\nerror: again\n"), "weak"),
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\n",
              fd2="12:00:00.000 | ERROR   | Task run 'load-data' - qa.jsonl line 3: not valid JSON\n"), "weak"),
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\n",
              fd2="12:00:00.000 | INFO    | Flow run 'x' - {data}/qa.jsonl line 3: not valid JSON\n"), "weak"),  # twice
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\n", side_effects=["registry"]), "weak"),
    (_outcome("Error: {data}/qa.jsonl line 3: not valid JSON\n"), "weak"),  # click's usage error, not ours
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\n", fd2="\x1b[2J"), "weak"),  # a raw escape
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\n", exit_code=0), "bad"),
    (_outcome("error: {data}/qa.jsonl line 3: not valid JSON\nTraceback (most recent call last):\n"), "bad"),
])
def test_the_grader_tells_good_from_weak_and_bad(outcome, expected, tmp_path):
    case = Case(id="probe", kind="table", about="a cut-off line", args=["validate"],
                expect=["qa.jsonl", ["line 3", "qa.jsonl:3"], "JSON"], forbid=["\x1b[2J"])
    ws = Workspace(tmp_path)
    seen = Outcome(outcome.exit_code, {name: ws.expand(text) for name, text in outcome.streams.items()},
                   outcome.seconds, outcome.side_effects)
    assert grade(case, ws, seen).grade == expected


def test_the_grader_sees_an_index_an_adapter_and_a_registered_version(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    ws = Workspace(tmp_path)
    shutil.copy(mlflow_store, ws.mlflow_db)
    assert side_effects(ws) == []
    (ws.index_root / ".lock").parent.mkdir()
    (ws.index_root / ".lock").touch()
    (ws.adapter_root / ".locks").mkdir(parents=True)
    assert side_effects(ws) == []
    (ws.index_root / "idx-0123456789ab").mkdir()
    (ws.adapter_root / ".checkpoints").mkdir()
    uri = f"sqlite:///{ws.mlflow_db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ragtune-ci")
    client.create_model_version("ragtune-ci", source=str(tmp_path))
    assert side_effects(ws) == ["index", "adapter", "registry"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_bad_input_ends_in_one_clear_error(case, tmp_path, capfd, mlflow_store, timings, prefect_server):
    ws = prepare(case, tmp_path / case.id, mlflow_store)
    outcome = run_in_process(case, ws, capfd.readouterr)
    timings[case.id] = outcome.seconds
    result = grade(case, ws, outcome)
    assert result.grade == "good", f"{case.about}: {result.grade}: {result.why}\n{show(outcome)}"


@pytest.mark.parametrize("case_id", REAL_PROCESS_CASES)
def test_a_real_ragtune_process_shows_one_clear_error(case_id, tmp_path, mlflow_store):
    """What a user's terminal shows: a real process with its own temporary Prefect server and its own streams."""
    case = next(c for c in CASES if c.id == case_id)
    ws = prepare(case, tmp_path / case.id, mlflow_store)
    outcome = run_subprocess(case, ws)
    result = grade(case, ws, outcome)
    assert result.grade == "good", f"{case.about}: {result.grade}: {result.why}\n{show(outcome)}"

