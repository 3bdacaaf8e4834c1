"""What every `ragtune` command shares: the Typer app, the console, the common options, and `_run`, which turns
expected user errors into one readable line and exit code 2."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from tasks.errors import UserError
from tasks.offline import enable_offline_mode
from tasks.text import visible_controls

enable_offline_mode()

app = typer.Typer(help="ragtune: finetune an SLM, use RAG, or both? Measured on your data, tracked in MLflow.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
DEBUG = bool(os.environ.get("RAGTUNE_DEBUG"))  # show the traceback of expected errors too


class _DataSafeConsole(Console):
    """The CLI's console: no markup (text from the data, e.g. a doc_id of `[/red]`, prints as is; styles are
    given explicitly) and control characters made visible, so no document can drive the terminal."""

    def render_str(self, text: str, **kwargs) -> Text:
        return super().render_str(visible_controls(text), **kwargs)


# Piped output (logs, CI) gets a width that fits the candidate table instead of rich's 80 columns.
console = _DataSafeConsole(markup=False) if sys.stdout.isatty() else _DataSafeConsole(markup=False, width=160)


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of expected errors too "
                                                 "(bad data, config, model source, endpoint, registry).")] = False
             ) -> None:
    global DEBUG
    DEBUG = DEBUG or debug


ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key, e.g. finetune.epochs=2.")]
DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Data path (dir, SQuAD .json or HF dir).")]
DEFAULT_CONFIG = "configs/default.yaml"  # the same default as flows.pipeline (not imported: it loads Prefect)


def _user_error_names() -> tuple[str, ...]:
    """Every expected error class by name (they are all subclasses of UserError, some defined in modules a
    command imports later), as Prefect's log records show them."""
    found, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo += cls.__subclasses__()
    return tuple(found)


class _OneLineForUserErrors(logging.Filter):
    """Prefect logs a failed run's exception with its traceback at the task and at the flow, and the final
    states with the whole message. For an expected user error those records keep their first line and
    lose the traceback (the Prefect UI shows them so; the whole message is the run's `error` artifact)."""

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(name in text for name in self.names):
            first = text.split("\\n")[0].splitlines()[0]  # repr()s in Prefect's messages escape newlines
            record.msg, record.args = first[:200] + " ... (the whole message: this run's `error` artifact)", ()
            record.exc_info, record.exc_text = None, None
            record.ragtune_user_error = True
        return True


class _NotOnTheConsole(logging.Filter):
    """The terminal shows an expected error once, as the CLI's `error:` line, not also as Prefect's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "ragtune_user_error", False)


def _quiet_user_errors() -> None:
    names = _user_error_names()
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _OneLineForUserErrors)]:
            logger.removeFilter(old)
        logger.addFilter(_OneLineForUserErrors(names))
    for logger in (logging.getLogger(), logging.getLogger("prefect")):  # Prefect's console handler is the root's
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, _NotOnTheConsole) for f in handler.filters):
                handler.addFilter(_NotOnTheConsole())


def _run(fn, *args, **kwargs):
    """Call a flow; turn expected user errors into one readable message and exit code 2 (`--debug`: the traceback).

    The config is checked first, so a typo fails in a second, before Prefect starts its server.
    """
    from tasks.redaction import hide_override_secrets
    from tasks.settings import load_config

    _quiet_user_errors()
    try:
        if "overrides" in kwargs:  # Prefect stores a flow's parameters: URL credentials move to the environment
            kwargs["overrides"] = hide_override_secrets(kwargs["overrides"] or [])
        if "config" in kwargs:
            load_config(kwargs["config"], kwargs.get("overrides"))
        return fn(*args, **kwargs)
    except UserError as err:
        if DEBUG:
            raise
        fail(str(err))


def fail(message: str) -> NoReturn:
    """Print `error: <message>` once and exit with status 2."""
    console.print(Text.assemble(("error:", "bold red"), " ", visible_controls(message)))
    raise typer.Exit(2)


def _need_prefect_server() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: start `ragtune server`, then "
             "`export PREFECT_API_URL=http://127.0.0.1:4200/api`.")
