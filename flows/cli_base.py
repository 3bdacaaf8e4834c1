"""What every `ragtune` command shares: the Typer app, the console, the common options, and `_run`, which turns
expected user errors into one readable line and exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from tasks.offline import enable_offline_mode

enable_offline_mode()

app = typer.Typer(help="ragtune: finetune an SLM, use RAG, or both? Measured on your data, tracked in MLflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
# Piped output (logs, CI) gets a width that fits the candidate table instead of rich's 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=160)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key, e.g. finetune.epochs=2.")]
DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Data path (dir, SQuAD .json or HF dir).")]
DEFAULT_CONFIG = "configs/default.yaml"  # the same default as flows.pipeline (not imported: it loads Prefect)


def _user_errors() -> tuple[type[Exception], ...]:
    from tasks.data_loading import DataLoadError
    from tasks.indexing import IndexBuildError
    from tasks.models import ModelSourceError
    from tasks.settings import ConfigError
    from tasks.validation import DataValidationError

    return ConfigError, DataLoadError, DataValidationError, ModelSourceError, IndexBuildError, FileNotFoundError


class _OneLineForUserErrors(logging.Filter):
    """Prefect logs a failed run's exception with its traceback at the task and at the flow, and the
    final states with the whole message. For an expected user error the CLI prints the message once
    (below), so those records keep their first line and lose the traceback."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(name in text for name in self.names):
            first = text.split("\\n")[0].splitlines()[0]  # repr()s in Prefect's messages escape newlines
            record.msg, record.args = first[:200] + " ... (the message follows below)", ()
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    names = tuple(e.__name__ for e in _user_errors())
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineForUserErrors) for f in logger.filters):
            logger.addFilter(_OneLineForUserErrors(names))


def _run(fn, *args, **kwargs):
    """Call a flow; turn expected user errors into one readable message and exit code 2.

    The config is checked first, so a typo fails in a second, before Prefect starts its server.
    """
    from tasks.settings import load_config

    _quiet_user_errors()
    try:
        if "config" in kwargs:
            load_config(kwargs["config"], kwargs.get("overrides"))
        return fn(*args, **kwargs)
    except _user_errors() as err:
        console.print("[bold red]error:[/]", escape(str(err)))
        raise typer.Exit(2) from None


def _need_prefect_server() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[bold red]error:[/] PREFECT_API_URL is not set: start `ragtune server`, then "
                      "`export PREFECT_API_URL=http://127.0.0.1:4200/api`.")
        raise typer.Exit(2)
