"""The Typer root and the one error boundary every command goes through."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from . import costs as llm_opt
from . import options as opt

# --metrics-* on run and resume (SPEC §7); the exporter itself lives in engine/metrics.py
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        envvar="FLOWRUN_METRICS_PORT",
        help="Serve Prometheus metrics on this port while the run lasts (0: a free one, printed).",
    ),
]
MetricsAddr = Annotated[
    str,
    typer.Option("--metrics-addr", envvar="FLOWRUN_METRICS_ADDR", help="Address to bind."),
]
MetricsLinger = Annotated[
    float,
    typer.Option(
        "--metrics-linger", min=0, help="Keep serving this many seconds after the run ends."
    ),
]
MetricsPush = Annotated[
    str | None,
    typer.Option(
        "--metrics-push",
        envvar="FLOWRUN_METRICS_PUSH",
        help="Push the final values to this Pushgateway URL (job flowrun, run_id group).",
    ),
]
MetricsFile = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        envvar="FLOWRUN_METRICS_FILE",
        help="Write the final values here in textfile-collector format (atomic).",
    ),
]

app = typer.Typer(
    name="flowrun",
    help="Run YAML workflows of commands, Python functions and LLM calls:"
    " durable, resumable, costed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
def run(
    file: Annotated[str, typer.Argument(help="The workflow YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=JSON state input; repeatable.")
    ] = None,
    input_: Annotated[
        str | None, typer.Option("--input", help="A JSON file of state inputs.")
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Choose the run id (e.g. a CI job id).")
    ] = None,
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    metrics_port: MetricsPort = None,
    metrics_addr: MetricsAddr = "127.0.0.1",
    metrics_linger: MetricsLinger = 0.0,
    metrics_push: MetricsPush = None,
    metrics_file: MetricsFile = None,
    pricing: llm_opt.Pricing = None,
    max_cost: llm_opt.MaxCost = None,
    llm_record: llm_opt.LLMRecord = None,
    llm_replay: llm_opt.LLMReplay = None,
) -> None:
    """Start a run of FILE.

    Example: flowrun run workflows/pipeline/pipeline.yaml --set limit=10 --json
    """
    from flowrun.engine.metrics import ExportOptions

    from .running import do_run

    do_run(
        file=file,
        sets=set_ or [],
        input_file=input_,
        run_id=run_id,
        db=db,
        max_concurrency=max_concurrency,
        json_out=json_out,
        quiet=quiet,
        durability=durability,
        events=events,
        metrics=ExportOptions(
            metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id, a unique prefix, or 'latest'.")],
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow", help="Use this (fixed) workflow file instead of the stored one."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Take over a run whose lease looks live.")
    ] = False,
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    metrics_port: MetricsPort = None,
    metrics_addr: MetricsAddr = "127.0.0.1",
    metrics_linger: MetricsLinger = 0.0,
    metrics_push: MetricsPush = None,
    metrics_file: MetricsFile = None,
    pricing: llm_opt.Pricing = None,
    max_cost: llm_opt.MaxCost = None,
    llm_record: llm_opt.LLMRecord = None,
    llm_replay: llm_opt.LLMReplay = None,
) -> None:
    """Continue a crashed, interrupted or failed run from its last committed step.

    Example: flowrun resume latest --max-cost 5
    """
    from flowrun.engine.metrics import ExportOptions

    from .running import do_resume

    do_resume(
        ref=run_id,
        workflow=workflow,
        force=force,
        db=db,
        max_concurrency=max_concurrency,
        json_out=json_out,
        quiet=quiet,
        durability=durability,
        events=events,
        metrics=ExportOptions(
            metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def costs(
    run_id: Annotated[str, typer.Argument(help="Run id, a unique prefix, or 'latest'.")],
    by: Annotated[str, typer.Option("--by", help="Group by model or node.")] = "model",
    db: opt.Db = None,
    json_out: opt.Json = False,
    pricing: llm_opt.Pricing = None,
) -> None:
    """The LLM cost table of a run, from its ledger: calls, tokens and USD per model or node.

    --pricing prices calls that were unpriced when they ran.
    Example: flowrun costs latest --by node --json
    """
    llm_opt.do_costs(ref=run_id, by=by, db=db, json_out=json_out, pricing=pricing)


@app.command()
def runs(
    status: Annotated[
        str | None, typer.Option("--status", help="Only runs with this status.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs.")] = 20,
    db: opt.Db = None,
    json_out: opt.Json = False,
) -> None:
    """List runs, newest first.

    Example: flowrun runs --status failed --json
    """
    from .inspecting import do_runs

    do_runs(status=status, limit=limit, db=db, json_out=json_out)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id, a unique prefix, or 'latest'.")],
    db: opt.Db = None,
    json_out: opt.Json = False,
    events: Annotated[bool, typer.Option("--events", help="List the run's events.")] = False,
) -> None:
    """Status, steps, per-node attempts, durations, errors and final state of a run.

    Exits with the run's status code (0 succeeded, 1 failed or unfinished, 130 interrupted).
    Example: flowrun show latest --json
    """
    from .inspecting import do_show

    do_show(ref=run_id, db=db, json_out=json_out, events=events)


@app.command()
def validate(
    file: Annotated[str, typer.Argument(help="The workflow YAML file.")],
    json_out: opt.Json = False,
) -> None:
    """Check a workflow without running it (exit 0 if valid, 2 if not).

    Example: flowrun validate graph.yaml
    """
    from .inspecting import do_validate

    do_validate(file=file, json_out=json_out)


@app.command()
def graph(
    file: Annotated[str, typer.Argument(help="The workflow YAML file.")],
    format: Annotated[str, typer.Option("--format", help="mermaid or dot.")] = "mermaid",
) -> None:
    """Draw the workflow as a Mermaid or Graphviz graph on stdout.

    Example: flowrun graph graph.yaml --format dot | dot -Tpng > graph.png
    """
    from .inspecting import do_graph

    do_graph(file=file, fmt=format)


@app.command()
def fork(
    run_id: Annotated[str, typer.Argument(help="Run id, a unique prefix, or 'latest'.")],
    from_step: Annotated[
        int,
        typer.Option("--from-step", min=0, help="Re-execute from this step (0: from the start)."),
    ],
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow", help="Use this (fixed) workflow file instead of the stored one."
        ),
    ] = None,
    new_run_id: Annotated[
        str | None, typer.Option("--run-id", help="Choose the new run's id.")
    ] = None,
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    metrics_port: MetricsPort = None,
    metrics_addr: MetricsAddr = "127.0.0.1",
    metrics_linger: MetricsLinger = 0.0,
    metrics_push: MetricsPush = None,
    metrics_file: MetricsFile = None,
    pricing: llm_opt.Pricing = None,
    max_cost: llm_opt.MaxCost = None,
    llm_record: llm_opt.LLMRecord = None,
    llm_replay: llm_opt.LLMReplay = None,
) -> None:
    """Start a new run from a committed step of an old one, and run it to the end.

    The new run gets the old run's workflow, inputs, and state and frontier as they
    were before step N; the old run is left as it was.
    Example: flowrun fork latest --from-step 3 --workflow fixed.yaml
    """
    from flowrun.engine.metrics import ExportOptions

    from .maintenance import do_fork

    do_fork(
        ref=run_id,
        from_step=from_step,
        workflow=workflow,
        run_id=new_run_id,
        db=db,
        max_concurrency=max_concurrency,
        json_out=json_out,
        quiet=quiet,
        durability=durability,
        events=events,
        metrics=ExportOptions(
            metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Delete runs last active longer ago than this."),
    ] = "30d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    status: Annotated[
        str | None, typer.Option("--status", help="Only runs with this status.")
    ] = None,
    db: opt.Db = None,
    json_out: opt.Json = False,
) -> None:
    """Delete old runs with all their rows, then reclaim the space (VACUUM).

    A run whose lease is live is never deleted.
    Example: flowrun prune --older-than 7d --status succeeded --dry-run
    """
    from .maintenance import do_prune

    do_prune(older_than=older_than, dry_run=dry_run, status=status, db=db, json_out=json_out)


def main(argv: list[str] | None = None) -> None:
    """Console entry point and the single error boundary.

    Typer/Click handle usage errors themselves (message, exit 2); every
    ``FlowrunError`` is printed here as one line plus a hint, never a traceback.
    """
    from flowrun.engine.errors import FlowrunError

    try:
        app(args=argv, prog_name="flowrun")
    except FlowrunError as exc:
        opt.print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("flowrun: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("FLOWRUN_DEBUG"):
            raise
        print(
            f"flowrun: internal error: {type(exc).__name__}: {exc}"
            " (set FLOWRUN_DEBUG=1 for a traceback, and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
