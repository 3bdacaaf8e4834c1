"""`ragtune` command line: run the pipeline or one stage, ask the champion, serve schedules, open the UI."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer
from rich.text import Text

from flows.cli_base import (  # noqa: F401 - _OneLineForUserErrors: part of this module's interface (tests)
    DEFAULT_CONFIG,
    ConfigOpt,
    DataOpt,
    SetOpt,
    _OneLineForUserErrors,
    _run,
    app,
    console,
)


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Run the whole retraining pipeline and print the candidate table and the champion decision."""
    import pandas as pd

    from flows.pipeline import retrain_flow
    from tasks.answer_types import DEFAULTS
    from tasks.report import print_comparison

    result = _run(retrain_flow, config=config, overrides=set_ or [], data=data)
    print_comparison(pd.DataFrame(result.comparison), console, DEFAULTS[result.answer_type].headline)
    for reason in result.decision.reasons:
        console.print(f"• {reason}")
    console.print(result.what_changed)
    console.print(f"MLflow parent run: {result.run_id}  (data fingerprint {result.fingerprint})")


@app.command()
def inspect(data: Annotated[str, typer.Option("--data", "-d", help="Data path (dir, SQuAD .json or HF dir).")],
            out: Annotated[str | None, typer.Option("--out", "-o", help="Starter config to write "
                                                    "(default: configs/ragtune-<data name>.yaml).")] = None,
            config: Annotated[str, typer.Option("--config", "-c", help="Template the starter config starts from.")]
            = DEFAULT_CONFIG) -> None:
    """Profile a new dataset (answer type and why, lengths, splits, rows validation would reject) and write
    a starter config that runs on it."""
    from pathlib import Path

    from tasks.inspection import inspect_dataset, read_template, write_config
    from tasks.report import print_inspection

    inspection = _run(inspect_dataset, Path(data), _run(read_template, config))
    target = Path(out) if out else Path("configs") / f"{Path(inspection.config['mlflow']['experiment']).name}.yaml"
    write_config(inspection, target)
    print_inspection(inspection, console)
    console.print(Text.assemble("\nstarter config written to ", (str(target), "bold"), "; next: ",
                                (f"ragtune run --config {target}", "bold")))


@app.command()
def validate(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Validate the data with the Great Expectations suites."""
    from flows.pipeline import validate_flow

    result = _run(validate_flow, config=config, overrides=set_ or [], data=data)
    console.print(result.validation.to_markdown())


@app.command()
def tune(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None,
         budget_minutes: Annotated[float | None, typer.Option(help="Budget of each study in minutes "
                                                              "(tune.budget_minutes), summed over resumes.")] = None,
         trials: Annotated[int | None, typer.Option(help="Trials of each study at most (tune.max_trials).")]
         = None,
         out: Annotated[str | None, typer.Option("--out", "-o", help="Tuned config to write (default: "
                                                 "<config>-tuned.yaml beside the config).")] = None) -> None:
    """Tune every candidate on the validation split before they are compared, each study in the same budget:
    the retrieval settings (chunking, dense/lexical/hybrid search, fusion) at a fixed passage budget, then each
    adapter candidate's finetune settings (pruned on held-out loss). The same command after a kill resumes.
    Writes the best settings as a config for `ragtune run`."""
    from flows.tune import tune_flow
    from tasks.tuning_report import study_line, terminal_table

    extra = [*([f"tune.budget_minutes={budget_minutes}"] if budget_minutes else []),
             *([f"tune.max_trials={trials}"] if trials else [])]
    result = _run(tune_flow, config=config, overrides=[*(set_ or []), *extra], data=data, out=out)
    for summary in result.studies:
        console.print(Text(f"\n{summary.kind}: {summary.space}", style="bold"))
        console.print(terminal_table(summary.trials))
        console.print(study_line(summary))
        console.print(f"settings found: {' '.join(summary.overrides) or 'none'}")
    console.print(Text.assemble("\ntuned config written to ", (str(result.config_path), "bold"), "; next: ",
                                (f"ragtune run --config {result.config_path}", "bold")))
    console.print(f"MLflow parent run: {result.run_id}")


index_app = typer.Typer(help="Build, inspect and query the versioned FAISS index.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Validate the data, then build the index incrementally (or reuse it) and make it current."""
    from flows.pipeline import index_flow

    build = _run(index_flow, config=config, overrides=set_ or [], data=data).index
    state = "reused as is" if build.reused else (
        f"built: {build.embedded} chunks embedded, {build.reused_vectors} reused, {build.removed} removed")
    console.print(f"index {build.version} ({build.faiss_type}, {build.num_chunks} chunks) {state}; "
                  f"{build.seconds:.1f} s; at {build.path}")


@index_app.command("status")
def index_status(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """List the stored index versions, newest first; the served one is marked."""
    from rich.table import Table

    from tasks.indexing import index_status as status_rows
    from tasks.settings import load_config

    cfg = _run(load_config, config, set_ or [])
    rows = status_rows(cfg.index)
    if not rows:
        console.print(f"no index under {cfg.index.root}: run `ragtune index build`")
        raise typer.Exit(1)
    table = Table(title=f"index versions under {cfg.index.root}")
    for column in rows[0]:
        table.add_column(column, justify="right" if isinstance(rows[0][column], int | float) else "left")
    for row in rows:
        table.add_row(*("*" if v is True else "" if v is False else str(v) for v in row.values()))
    console.print(table)


@index_app.command("search")
def index_search(query: str, k: Annotated[int | None, typer.Option("-k", help="Hits (default: index.top_k).")] = None,
                 config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Search the current index version and print the top-k chunks."""
    from rich.table import Table

    from tasks.indexing import current_index_dir
    from tasks.retrieval import Retriever
    from tasks.settings import load_config

    cfg = _run(load_config, config, set_ or [])
    retriever = _run(Retriever, _run(current_index_dir, cfg.index), cfg.index)
    table = Table(title=f"{query!r} in {retriever.version}")
    for column, justify in (("rank", "right"), ("score", "right"), ("chunk", "left"), ("text", "left")):
        table.add_column(column, justify=justify)
    for rank, hit in enumerate(retriever.search([query], k)[0], start=1):
        table.add_row(str(rank), f"{hit.score:.3f}", hit.chunk_id, hit.text)
    console.print(table)


@app.command()
def finetune(mode: Annotated[str, typer.Option(help="Adapter mode: closed_book or raft.")] = "closed_book",
             config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Train (or reuse) a LoRA adapter."""
    from tasks.candidates import ADAPTER_MODES

    if mode not in ADAPTER_MODES:
        raise typer.BadParameter(f"mode must be one of {', '.join(ADAPTER_MODES)}")
    from flows.pipeline import finetune_flow

    result = _run(finetune_flow, mode=mode, config=config, overrides=set_ or [], data=data).adapters[mode].result
    console.print(f"adapter {result.adapter_dir}: eval loss {result.eval_loss:.3f}, perplexity {result.perplexity:.2f}")


@app.command()
def evaluate(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Evaluate the configured candidates on the test split (no promotion)."""
    import pandas as pd

    from flows.pipeline import evaluate_flow
    from tasks.answer_types import DEFAULTS
    from tasks.report import print_comparison

    result = _run(evaluate_flow, config=config, overrides=set_ or [], data=data)
    print_comparison(pd.DataFrame(result.comparison), console, DEFAULTS[result.answer_type].headline)


@app.command()
def promote(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, data: DataOpt = None) -> None:
    """Evaluate the candidates and apply the champion policy to the registry."""
    from flows.pipeline import evaluate_flow

    decision = _run(evaluate_flow, config=config, overrides=set_ or [], data=data, promote=True).decision
    for reason in decision.reasons:
        console.print(f"• {reason}")


@app.command()
def ask(question: str, config: ConfigOpt = DEFAULT_CONFIG,
        alias: Annotated[str, typer.Option(help="Registry alias to load.")] = "champion") -> None:
    """Answer a question with the registered model (default: the champion), built by the installed code from
    a version that passes the registry checks (tasks.registry)."""
    from flows.pipeline import prepare
    from tasks.registry import load_version

    cfg = _run(prepare, config, [], None)
    answer = _run(load_version, cfg.champion.model_name, alias=alias).answerer.answer([question])[0]
    console.print(answer.text, style="bold")
    console.print(f"sources: {', '.join(answer.sources) or '(closed book)'}  ({answer.latency_ms:.0f} ms)")


@app.command()
def gateway(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
            mode: Annotated[str | None, typer.Option(help="off | split | shadow (default: gateway.mode).")] = None,
            share: Annotated[float | None, typer.Option(help="Challenger share in split mode.")] = None,
            port: Annotated[int | None, typer.Option(help="Port (default: gateway.port).")] = None) -> None:
    """Serve the registry's champion and challenger over HTTP for A/B tests: POST /ask, POST /feedback,
    GET /health, GET /ready; every request recorded as an MLflow trace."""
    import uvicorn

    from flows.pipeline import prepare
    from tasks.gateway import create_app

    extra = [f"gateway.{k}={v}" for k, v in (("mode", mode), ("challenger_share", share), ("port", port))
             if v is not None]
    cfg = _run(prepare, config, [*(set_ or []), *extra], None)
    console.print(f"gateway for {cfg.champion.model_name} ({cfg.gateway.mode}, challenger share "
                  f"{cfg.gateway.challenger_share}) on http://{cfg.gateway.host}:{cfg.gateway.port}; requests are "
                  f"traces in experiment {cfg.mlflow.experiment}")
    uvicorn.run(create_app(cfg), host=cfg.gateway.host, port=cfg.gateway.port, log_level="warning")


@app.command("ab-report")
def ab_report(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
              since_hours: Annotated[float, typer.Option(help="Only requests of the last N hours.")] = 168.0,
              apply: Annotated[bool, typer.Option(help="Move the aliases as decided.")] = True) -> None:
    """Decide champion vs challenger on the gateway's recorded requests and feedback (the `ab:` policy)."""
    from flows.ab_report import ab_report_flow

    action = _run(ab_report_flow, config=config, overrides=set_ or [], since_hours=since_hours, apply=apply)
    console.print(Text.assemble("A/B decision: ", (str(action), "bold"),
                                " (the report is ab_decision.md of the ab-report run in MLflow)"))


@app.command()
def history(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
            last: Annotated[int, typer.Option(help="Show the last N retrainings.")] = 20) -> None:
    """Which candidate was champion after each retraining, its objective with interval, and what changed."""
    from flows.pipeline import prepare
    from tasks.history import decision_history
    from tasks.report import print_history

    cfg = _run(prepare, config, set_ or [], None)
    table = decision_history(cfg)
    if table.empty:
        console.print(f"no retraining in experiment {cfg.mlflow.experiment} reached a decision yet: `ragtune run`")
        raise typer.Exit(1)
    print_history(table.tail(last), console, " + ".join(f"{w}×{m}" for m, w in cfg.champion.objective.items()))


@app.command()
def ui(config: ConfigOpt = DEFAULT_CONFIG, port: int = 5000) -> None:
    """Open the MLflow UI on 127.0.0.1 for this project's store (one light server process; Ctrl-C stops it)."""
    import mlflow

    from flows.engines import ui_command
    from tasks.settings import load_config
    from tasks.tracking import setup_tracking, ui_link

    cfg = _run(load_config, config)
    _run(setup_tracking, cfg.mlflow)
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    console.print(f"MLflow UI: {ui_link(f'experiments/{experiment.experiment_id}', port)}")
    command, env = ui_command(mlflow.get_tracking_uri(), port)
    sys.stdout.flush()
    os.execve(command[0], command, env)  # the server replaces this process: nothing of the CLI stays resident


from flows import cli_engines  # noqa: E402, F401 - registers server, tracking-server, deploy, worker, serve


def _terminated(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """The `ragtune` entry point. SIGTERM (`kill`, a scheduler's timeout) unwinds like Ctrl-C instead of
    vanishing: the MLflow runs end FAILED and Prefect stops its temporary server."""
    signal.signal(signal.SIGTERM, _terminated)
    app()
