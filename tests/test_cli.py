from typer.testing import CliRunner

# Prefect binds its log handlers to the stderr of its first import: import it here, not inside
# CliRunner's temporary streams, or later flow runs in this session log to a closed file.
import flows.retrain  # noqa: F401
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
