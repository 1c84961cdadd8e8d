"""``run:`` (argv, no shell) and ``shell:`` (/bin/sh -c, values shell-quoted) nodes.

Commands inherit the environment, provider keys included (scripts that call an
API themselves rely on it). What they print is kept only as tails for ``flowrun
show``, masked by the run's secrets masker before it is cut to length.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from .. import jsonvalue
from ..spec import templates
from ..spec.model import Node
from .base import Context, TaskError, TaskTimeout, template_scope

TAIL = 4000
POLL_S = 0.25  # how often a waiting task looks at the abort flag
DRAIN_S = 2.0  # how long to read what a killed process group left in its pipes


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _communicate(
    proc: subprocess.Popen[bytes], ctx: Context, timeout: float | None
) -> tuple[bytes, bytes]:
    """Wait for the process and its output; past ``timeout`` or on abort, kill its group."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
        try:
            return proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            aborted = ctx.scope.abort.is_set()
            if not aborted and (deadline is None or time.monotonic() < deadline):
                continue
        kill_group(proc)
        out, err = _drain(proc)
        e: TaskError
        if aborted:
            e = TaskError(
                "interrupted; killed its process group", retryable=False, reason="interrupted"
            )
        else:
            e = TaskTimeout(f"timed out after {timeout:g}s; killed its process group")
        e.stdout, e.stderr = _tail(out, ctx), _tail(err, ctx)
        raise e


def _clip(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _drain(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """The output of a process whose group was just killed.

    A descendant that left the group (``setsid``, a daemon) may still hold the pipes
    open; the task does not wait for it: after a short drain the pipes are closed.
    """
    try:
        return proc.communicate(timeout=DRAIN_S)
    except subprocess.TimeoutExpired as exc:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        proc.wait()
        return _bytes(exc.stdout), _bytes(exc.stderr)


def _bytes(data: str | bytes | None) -> bytes:
    if data is None:
        return b""
    return data.encode() if isinstance(data, str) else data


def _tail(data: bytes, ctx: Context) -> str:
    """The last ``TAIL`` bytes of a stream, its secrets masked before the cut.

    All of it is masked (10-50 ms a megabyte): a secret that straddles the cut
    would not be recognised in the tail alone.
    """
    masker = ctx.scope.masker
    if masker:
        data = masker.text(data.decode("utf-8", "replace")).encode("utf-8")
    return data[-TAIL:].decode("utf-8", "replace")


def run_command(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Any:
    scope = template_scope(state, ctx)
    try:
        if node.kind == "shell":
            text = templates.render(node.body, scope, shell=True)
            argv = ["/bin/sh", "-c", text if isinstance(text, str) else str(text)]
        else:
            argv = [templates.render_text(a, scope) for a in node.body]
        env = dict(os.environ)
        env.update({k: templates.render_text(v, scope) for k, v in node.env.items()})
        cwd = ctx.scope.base_dir
        if node.cwd:
            cwd = cwd / templates.render_text(node.cwd, scope)
    except templates.TemplateError as exc:
        raise TaskError(str(exc), retryable=False, reason="template") from None
    if not cwd.is_dir():
        raise TaskError(f"cwd {cwd} is not a directory", retryable=False, reason="cwd")
    if "FLOWRUN_RUN_ID" not in node.env:  # the node's own env may set it; an inherited one may not
        env["FLOWRUN_RUN_ID"] = ctx.run_id
    env["FLOWRUN_NODE"] = ctx.node
    env["FLOWRUN_STEP"] = str(ctx.step)
    env["FLOWRUN_ATTEMPT"] = str(ctx.attempt)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills all of it
        )
    except FileNotFoundError:
        raise TaskError(f"command not found: {argv[0]}", retryable=False) from None
    except OSError as exc:
        raise TaskError(f"cannot start {argv[0]}: {exc.strerror}", retryable=False) from None
    except ValueError as exc:  # e.g. a NUL byte in a rendered argument or env value
        raise TaskError(f"cannot start {argv[0]}: {exc}", retryable=False) from None
    ctx.scope.track(proc)
    log = ctx.scope.proc_log
    try:  # noted in the store, so a resume after kill -9 of flowrun can kill the group
        row = None if log is None else log.started(ctx, proc.pid)
    except BaseException:
        kill_group(proc)
        _drain(proc)
        ctx.scope.untrack(proc)
        raise
    try:
        out, err = _communicate(proc, ctx, timeout)
    finally:
        ctx.scope.untrack(proc)
        if row is not None:
            log.ended(row)
    if proc.returncode != 0:
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode}"
        else:
            why = f"exit code {proc.returncode}"
        stdout, stderr = _tail(out, ctx), _tail(err, ctx)
        last = stderr.strip().splitlines()
        detail = f": {_clip(last[-1])}" if last else ""
        failure = TaskError(f"command failed ({why}){detail}", reason="exit")
        failure.stdout, failure.stderr = stdout, stderr
        raise failure
    text = out.decode("utf-8", "replace")
    try:
        result = _convert(node, text)
    except TaskError as exc:  # output it cannot use: keep the tails to show why
        exc.stdout, exc.stderr = _tail(out, ctx), _tail(err, ctx)
        raise
    return CommandResult(result, _tail(out, ctx), _tail(err, ctx))


class CommandResult:
    """A command's converted output plus the tails of its streams, for ``flowrun show``."""

    __slots__ = ("stderr", "stdout", "value")

    def __init__(self, value: Any, stdout: str, stderr: str) -> None:
        self.value = value
        self.stdout = stdout
        self.stderr = stderr


def _convert(node: Node, text: str) -> Any:
    if node.output == "none":
        return None
    if node.output == "lines":
        return [line for line in text.splitlines() if line.strip()]
    if node.output == "json":
        try:
            return jsonvalue.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(
                f"output: json, but stdout is not JSON ({exc.msg} at line {exc.lineno})",
                retryable=False,
                reason="output",
            ) from None
        except jsonvalue.JSONValueError as exc:
            raise TaskError(
                f"output: json, but stdout is not usable JSON: {exc}",
                retryable=False,
                reason="output",
            ) from None
    return text.rstrip("\n")
