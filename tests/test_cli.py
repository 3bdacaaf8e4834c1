from typer.testing import CliRunner

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
