from typer.testing import CliRunner

# Prefect binds its log handlers to the stderr of its first import: import it here, not inside
# CliRunner's temporary streams, or later flow runs in this session log to a closed file.
import flows.pipeline  # noqa: F401
from flows.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "index", "finetune", "evaluate", "promote", "ask", "serve", "ui"):
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
