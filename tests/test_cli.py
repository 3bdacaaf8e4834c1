from typer.testing import CliRunner

# Prefect binds its log handlers to the stderr of its first import: import it here, not inside
# CliRunner's temporary streams, or later flow runs in this session log to a closed file.
import flows.pipeline  # noqa: F401
from flows.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "index", "finetune", "evaluate", "promote", "ask", "serve", "ui", "tune"):
        assert command in result.output


def test_bad_override_names_the_key_and_exits_2():
    result = runner.invoke(app, ["run", "--config", "configs/ci.yaml", "--set", "finetune.epoch=2"])
    assert result.exit_code == 2
    assert "finetune.epoch" in result.output


def test_missing_config_file_exits_2():
    result = runner.invoke(app, ["validate", "--config", "configs/missing.yaml"])
    assert result.exit_code == 2
    assert "config file not found: configs/missing.yaml" in result.output


def test_index_help_lists_build_status_search():
    result = runner.invoke(app, ["index", "--help"])
    assert result.exit_code == 0
    for command in ("build", "status", "search"):
        assert command in result.output


def test_index_status_and_search(tmp_path):
    import pandas as pd

    from tasks.indexing import build_index
    from tasks.settings import load_config

    root = f"index.root={tmp_path / 'index'}"
    empty = runner.invoke(app, ["index", "status", "--config", "configs/ci.yaml", "--set", root])
    assert empty.exit_code == 1 and "no index under" in empty.output
    docs = pd.DataFrame({"doc_id": ["a", "b"], "title": ["A", "B"],
                         "text": ["Buoys are painted yellow.", "The office opens at 8 am."]})
    build = build_index(docs, "fp", load_config("configs/ci.yaml", [root]).index)
    status = runner.invoke(app, ["index", "status", "--config", "configs/ci.yaml", "--set", root])
    assert status.exit_code == 0 and build.version in status.output
    search = runner.invoke(app, ["index", "search", "When does the office open?", "-k", "1",
                                 "--config", "configs/ci.yaml", "--set", root])
    assert search.exit_code == 0 and "b#0" in search.output and "a#0" not in search.output


def test_a_data_error_is_printed_once_with_its_rule_ids_and_no_traceback(tmp_path):
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT, write_jsonl

    data = tmp_path / "broken"
    shutil.copytree(ROOT / "data" / "demo", data)
    qa = [json.loads(line) for line in (data / "qa.jsonl").read_text().splitlines()]
    qa[0]["answer"] = ["[/red] is in no document"]  # console markup in the data must not be interpreted
    write_jsonl(data / "qa.jsonl", qa)
    # A real process, as a user runs it (its own temporary Prefect server, its own streams).
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ragtune"), "validate", "--config", "configs/ci.yaml", "--data", str(data),
         "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
         "--set", f"mlflow.artifact_location={tmp_path}/artifacts"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode == 2
    assert output.count("[qa.answer_in_gold_doc] the gold answer occurs in its gold document") == 1
    assert "'[/red] is in no document' not in doc bw-001" in output
    assert "relax with data.answer_type" in output and "validation.on_failure=quarantine" in output
    assert "Traceback" not in output


def test_prefect_records_of_a_user_error_keep_one_line_and_no_traceback():
    import logging
    import sys

    from flows.cli import _OneLineForUserErrors
    from tasks.validation import DataValidationError, ValidationReport

    try:
        raise DataValidationError(ValidationReport("data/x", False))
    except DataValidationError:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                                   "Task run failed with exception: %r", (sys.exc_info()[1],), sys.exc_info())
    assert _OneLineForUserErrors(("DataValidationError",)).filter(record)
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert record.getMessage().startswith("Task run failed with exception: DataValidationError(")


def test_an_error_message_cannot_drive_the_terminal(monkeypatch):
    """Data text in a message prints as is: no markup read, control characters (escape sequences) made visible."""
    import io

    import pytest
    import typer

    from flows import cli_base

    buffer = io.StringIO()
    monkeypatch.setattr(cli_base, "console", cli_base._DataSafeConsole(markup=False, file=buffer, width=200))
    with pytest.raises(typer.Exit) as exit_info:
        cli_base.fail("qa.jsonl: record 3 (qa_id=[/red]): question '\x1b[2J\x1b]0;owned\x07' is too short")
    assert exit_info.value.exit_code == 2
    assert buffer.getvalue() == ("error: qa.jsonl: record 3 (qa_id=[/red]): question '\\x1b[2J\\x1b]0;owned\\x07' "
                                 "is too short\n")
