"""The Typer root and the one error boundary every command goes through.

No ``from __future__ import annotations`` here: Typer reads every command's
parameters at each start, and string annotations would be evaluated again each
time (``typer.Option(...)`` objects rebuilt, ~10 ms of every command, --help too).
"""

import os
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from . import costs as llm_opt
from . import options as opt

if TYPE_CHECKING:
    from .running import Shown

# --metrics-* on run and resume (docs/metrics.md); the exporter itself lives in engine/metrics.py
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        metavar="PORT",
        max=65535,
        envvar="FLOWRUN_METRICS_PORT",
        help="Serve Prometheus metrics on this port while the run lasts (0: a free one, printed).",
    ),
]
MetricsAddr = Annotated[
    str,
    typer.Option(
        "--metrics-addr", envvar="FLOWRUN_METRICS_ADDR", metavar="ADDR", help="Address to bind."
    ),
]
MetricsLinger = Annotated[
    float,
    typer.Option(
        "--metrics-linger",
        metavar="SECONDS",
        help="Keep serving this many seconds after the run ends (at most 86400; inf: until"
        " Ctrl-C or SIGTERM).",
    ),
]
MetricsPush = Annotated[
    str | None,
    typer.Option(
        "--metrics-push",
        metavar="URL",
        envvar="FLOWRUN_METRICS_PUSH",
        help="Push the final values to this Pushgateway URL (job flowrun, run_id group).",
    ),
]
MetricsFile = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        metavar="PATH",
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


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"flowrun {version('flowrun')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            expose_value=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    pass


def _shown(
    json_out: bool,
    quiet: bool,
    verbose: bool,
    events: str | None,
    max_concurrency: int | None,
    output_limit: str | None,
    junit: str | None,
    metrics: tuple[int | None, str, float, str | None, str | None],
    executor: str = "threads",
) -> "Shown":
    """The flags ``run``, ``resume`` and ``fork`` share for showing and reporting a run."""
    from flowrun.engine.metrics import ExportOptions
    from flowrun.engine.runtime.executors import check_kind

    from .reports import ci_reports
    from .running import Shown

    return Shown(
        json_out=json_out,
        quiet=quiet,
        verbose=verbose,
        events=events,
        max_concurrency=max_concurrency,
        metrics=ExportOptions(*metrics),
        output_limit=opt.output_limit(output_limit),
        reports=ci_reports(junit),
        executor=check_kind(executor),
    )


@app.command()
def run(
    file: opt.WorkflowFile,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=JSON",
            help="Set a state key (a bare word is a string); repeatable.",
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option("--input", metavar="FILE.json", help="A JSON object of state inputs."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            envvar="FLOWRUN_RUN_ID",
            metavar="ID",
            help="Choose the run id (e.g. a CI job id); a retry of the same id continues it.",
        ),
    ] = None,
    if_exists: Annotated[
        str,
        typer.Option(
            "--if-exists",
            metavar="continue|fail",
            help="An --run-id that exists: continue it (report it if it succeeded), or fail.",
        ),
    ] = "continue",
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    executor: opt.ExecutorOpt = "threads",
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    output_limit: opt.OutputLimit = None,
    junit: opt.Junit = None,
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

    Prints the run id first; exits 0 succeeded, 1 failed, 2 bad workflow or usage,
    3 refused, 130 interrupted. Run again with the same --run-id, the command
    continues an unfinished run and reports a finished one without running it.

    Example: flowrun run workflows/pipeline/pipeline.yaml --set source=data/reviews.json --json
    """
    from .running import do_run

    do_run(
        file=file,
        sets=set_ or [],
        input_file=input_,
        run_id=run_id,
        if_exists=if_exists,
        db=db,
        durability=durability,
        shown=_shown(
            json_out,
            quiet,
            verbose,
            events,
            max_concurrency,
            output_limit,
            junit,
            (metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file),
            executor,
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def resume(
    run_id: opt.RunRef,
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow",
            metavar="FILE",
            help="Use this (fixed) workflow file instead of the stored one.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Take over a run whose owner is alive (on this host its commands are"
            " killed first, and the owner too if it is stopped or silent).",
        ),
    ] = False,
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    executor: opt.ExecutorOpt = "threads",
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    output_limit: opt.OutputLimit = None,
    junit: opt.Junit = None,
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
    """Continue a crashed, interrupted or failed run.

    It picks up from the run's last committed step.

    Example: flowrun resume latest --max-cost 5
    """
    from .running import do_resume

    do_resume(
        ref=run_id,
        workflow=workflow,
        force=force,
        db=db,
        durability=durability,
        shown=_shown(
            json_out,
            quiet,
            verbose,
            events,
            max_concurrency,
            output_limit,
            junit,
            (metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file),
            executor,
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def costs(
    run_id: opt.RunRef,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            metavar="model|node|call",
            help="Group by model or node, or list every call (with the model that served it).",
        ),
    ] = "model",
    db: opt.Db = None,
    json_out: opt.Json = False,
    pricing: llm_opt.Pricing = None,
) -> None:
    """A run's LLM costs: calls, tokens and USD per model or node.

    From the run's ledger; --pricing prices calls that were unpriced when they ran.

    Example: flowrun costs latest --by node --json
    """
    llm_opt.do_costs(ref=run_id, by=by, db=db, json_out=json_out, pricing=pricing)


@app.command()
def prices(
    models: Annotated[
        list[str], typer.Argument(metavar="MODEL...", help="Model names, as a workflow names them.")
    ],
    json_out: opt.Json = False,
    pricing: llm_opt.Pricing = None,
) -> None:
    """What models cost now and where each price came from.

    USD per million tokens of each kind (input, output, cache reads and writes,
    reasoning), long-context tiers and the provider. Prices come from genai-prices'
    offline snapshot, with --pricing FILE.yaml entries over it. Exits 1 if a model is
    unpriced.

    Example: flowrun prices gpt-4o claude-sonnet-4-5 vertex_ai/gemini-2.5-pro --json
    """
    from .prices import do_prices

    do_prices(models=models, json_out=json_out, pricing=pricing)


@app.command()
def runs(
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Only runs with this status: running, succeeded, failed or interrupted.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, metavar="N", help="At most this many runs.")
    ] = 20,
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
    run_id: opt.RunRef,
    db: opt.Db = None,
    json_out: opt.Json = False,
    events: Annotated[bool, typer.Option("--events", help="List the run's events.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Print every state value whole, not cut.")
    ] = False,
    junit: Annotated[
        str | None,
        typer.Option(
            "--junit", metavar="FILE.xml", help="Also write the run as a JUnit XML report."
        ),
    ] = None,
) -> None:
    """A run's status, times, costs, attempts per node, errors, state.

    Long state values are cut; --full shows them whole. Exits with the run's status
    code (0 succeeded, 1 failed or unfinished, 130 interrupted).

    Example: flowrun show latest --json
    """
    from .inspecting import do_show

    do_show(ref=run_id, db=db, json_out=json_out, events=events, full=full, junit=junit)


@app.command()
def validate(
    file: opt.WorkflowFile,
    json_out: opt.Json = False,
) -> None:
    """Check a workflow without running it (exit 0 if valid, 2 if not).

    Example: flowrun validate graph.yaml
    """
    from .inspecting import do_validate

    do_validate(file=file, json_out=json_out)


@app.command()
def graph(
    file: opt.WorkflowFile,
    format: Annotated[
        str, typer.Option("--format", metavar="mermaid|dot", help="mermaid or dot.")
    ] = "mermaid",
) -> None:
    """Draw the workflow as a Mermaid or Graphviz graph on stdout.

    Example: flowrun graph graph.yaml --format dot | dot -Tpng > graph.png
    """
    from .inspecting import do_graph

    do_graph(file=file, fmt=format)


@app.command()
def schema() -> None:
    """The JSON Schema (draft 2020-12) of the workflow format.

    Editors use it to check and complete workflow files as you type.

    Example: flowrun schema > flowrun.schema.json
    """
    from .inspecting import do_schema

    do_schema()


@app.command()
def fork(
    run_id: opt.RunRef,
    from_step: Annotated[
        int,
        typer.Option(
            "--from-step",
            min=0,
            metavar="N",
            help="Re-execute from this step (0: from the start).",
        ),
    ],
    workflow: Annotated[
        str | None,
        typer.Option(
            "--workflow",
            metavar="FILE",
            help="Use this (fixed) workflow file instead of the stored one.",
        ),
    ] = None,
    new_run_id: Annotated[
        str | None, typer.Option("--run-id", metavar="ID", help="Choose the new run's id.")
    ] = None,
    db: opt.Db = None,
    max_concurrency: opt.MaxConcurrency = None,
    executor: opt.ExecutorOpt = "threads",
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    verbose: opt.Verbose = False,
    durability: opt.Durability = "normal",
    events: opt.Events = None,
    junit: opt.Junit = None,
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
    """Start a new run from a committed step of an old one.

    The new run gets the old run's workflow, inputs, and state and frontier as they
    were before step N, and runs to its end; the old run is left as it was.

    Example: flowrun fork latest --from-step 3 --workflow fixed.yaml
    """
    from .maintenance import do_fork

    do_fork(
        ref=run_id,
        from_step=from_step,
        workflow=workflow,
        run_id=new_run_id,
        db=db,
        durability=durability,
        shown=_shown(
            json_out,
            quiet,
            verbose,
            events,
            max_concurrency,
            None,
            junit,
            (metrics_port, metrics_addr, metrics_linger, metrics_push, metrics_file),
            executor,
        ),
        llm=llm_opt.LLMOptions(pricing, max_cost, llm_record, llm_replay),
    )


@app.command()
def logs(
    run_id: opt.RunRef,
    node: Annotated[
        str | None, typer.Argument(metavar="[NODE]", help="Only this node's tasks.")
    ] = None,
    index: Annotated[
        int | None, typer.Option("--index", metavar="N", help="Only the foreach task N.")
    ] = None,
    attempt: Annotated[
        int | None, typer.Option("--attempt", min=1, metavar="N", help="Only attempt N.")
    ] = None,
    db: opt.Db = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON array of task attempts on stdout.")
    ] = False,
) -> None:
    """Print what a run's tasks printed, every attempt, in task order.

    Each line is labelled with its task: `score[3] | …` for stdout, `score[3] ! …`
    for stderr; `… N bytes cut …` marks where an attempt's output was cut to the
    --output-limit of the run.

    Example: flowrun logs latest score --index 3
    """
    from .logs import do_logs

    do_logs(ref=run_id, node=node, index=index, attempt=attempt, db=db, json_out=json_out)


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Delete runs last active longer ago than this (e.g. 30d, 12h).",
        ),
    ] = "30d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            metavar="STATUS",
            help="Only runs with this status: running, succeeded, failed or interrupted.",
        ),
    ] = None,
    db: opt.Db = None,
    json_out: opt.Json = False,
) -> None:
    """Delete old runs and reclaim their space.

    Each run goes with all its rows, then the file is compacted (VACUUM). A run
    whose lease is live is never deleted.

    Example: flowrun prune --older-than 7d --status succeeded --dry-run
    """
    from .maintenance import do_prune

    do_prune(older_than=older_than, dry_run=dry_run, status=status, db=db, json_out=json_out)


def main(argv: list[str] | None = None) -> None:
    """Console entry point and the single error boundary.

    Every failure, the parser's usage errors included, is printed as one line plus a
    hint on stderr, never a traceback; with ``--json`` a command that failed before it
    printed its JSON still prints one object, ``{"error", "hint", "exit_code"}``.
    """
    from flowrun.engine.errors import FlowrunError, WorkflowError

    from . import console

    console.guard_streams()  # a reader that goes away never changes a run
    args = sys.argv[1:] if argv is None else list(argv)
    json_mode = "--json" in (args[: args.index("--")] if "--" in args else args)

    def fail(
        message: str, hint: str | None, code: int, errors: list[dict[str, Any]] | None = None
    ) -> NoReturn:
        shown = errors or [{"message": message, "hint": hint}]
        for e in shown:  # a file name or --set value with bytes that are not UTF-8 stays printable
            e["message"] = _printable(e["message"])
            e["hint"] = e["hint"] and _printable(e["hint"])
        opt.print_errors([SimpleNamespace(**e) for e in shown])
        if json_mode and not opt.json_written():
            out: dict[str, Any] = {
                "error": shown[0]["message"],
                "hint": shown[0]["hint"],
                "exit_code": code,
            }
            if errors is not None:
                out["errors"] = shown
            opt.write_json(out)
        sys.exit(code)

    try:
        try:
            rv = app(args=args, prog_name="flowrun", standalone_mode=False)
        finally:
            opt.close_stores()  # SQLite folds the WAL back: no -wal/-shm left behind
    except WorkflowError as exc:
        console.annotate(exc)  # under GitHub Actions, each error at its line
        fail(exc.message, exc.hint, exc.exit_code, [_located(e) for e in exc.errors])
    except FlowrunError as exc:
        fail(exc.message, exc.hint, exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        fail("interrupted", None, 130)
    except Exception as exc:
        if _is_parser_error(exc):
            parser_error(exc, fail)
        if os.environ.get("FLOWRUN_DEBUG"):
            raise
        fail(
            f"internal error: {type(exc).__name__}: {exc}",
            "set FLOWRUN_DEBUG=1 for a traceback, and please report it",
            1,
        )
    sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(code) from a command or --help


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _located(e: Any) -> dict[str, Any]:
    """One error of an invalid workflow, as ``--json`` lists it."""
    return {
        "message": e.message,
        "hint": e.hint,
        "file": e.file,
        "line": e.line,
        "column": e.column,
        "key": e.key,
    }


def _is_parser_error(exc: BaseException) -> bool:
    """Click's own exceptions (vendored by newer Typer): they carry their exit code."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def parser_error(exc: Any, fail: Callable[[str, str | None, int], NoReturn]) -> NoReturn:
    """Bad flags or arguments, as the parser found them: one line, a hint, exit 2."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `flowrun`: the help, on stderr
        exc.show()
        sys.exit(exc.exit_code)
    where = ctx.command_path if ctx is not None else "flowrun"
    fail(exc.format_message(), f"see `{where} --help`", exc.exit_code)


if __name__ == "__main__":
    main()
