"""``run:`` (argv, no shell) and ``shell:`` (/bin/sh -c, values shell-quoted) nodes.

Commands inherit the environment, provider keys included (scripts that call an
API themselves rely on it). What they print goes through the attempt's
:class:`~flowrun.engine.output.Capture`, which masks the run's secrets before
anything is shown, cut or stored.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import jsonvalue
from ..output import Capture
from ..spec import templates
from ..spec.model import Node
from .base import Context, TaskError, TaskTimeout, template_scope
from .registry import Printed

READ_SIZE = 1 << 16
POLL_S = 0.25  # how often a waiting task looks at the abort flag
DRAIN_S = 2.0  # how long to read what a killed process group left in its pipes


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _pump(
    proc: subprocess.Popen[bytes],
    ctx: Context,
    capture: Capture,
    keep: list[bytes] | None,
    timeout: float | None,
) -> None:
    """Read both pipes into ``capture`` (and stdout into ``keep``) until the process ends.

    Past ``timeout`` or on abort the process group is killed, what it left in the
    pipes is read for a short while, and the failure raised; if reading itself fails
    the group is killed and waited for before the error goes on. A descendant that left
    the group (``setsid``, a daemon) may still hold the pipes open; the task does not
    wait for it: after the drain the pipes are closed.
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in streams}
    failure: TaskError | None = None
    drain_until = 0.0
    try:
        with selectors.DefaultSelector() as sel:
            for fd in streams:
                sel.register(fd, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if failure is None and (
                    ctx.scope.abort.is_set() or (deadline is not None and now >= deadline)
                ):
                    kill_group(proc)
                    failure = _killed(ctx, timeout)
                    drain_until = now + DRAIN_S
                elif failure is not None and now >= drain_until:
                    break
                if failure is not None:
                    wait_s = max(0.0, min(POLL_S, drain_until - now))
                else:
                    wait_s = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - now))
                if not sel.get_map():  # both pipes are closed: wait for the exit itself
                    try:
                        proc.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
                for key, _ in sel.select(wait_s):
                    fd = key.fd
                    data = os.read(fd, READ_SIZE)
                    stream = streams[fd]
                    if not data:
                        sel.unregister(fd)
                        capture.write(stream, decoders[fd].decode(b"", final=True))
                        continue
                    if keep is not None and stream == "stdout":
                        keep.append(data)
                    capture.write(stream, decoders[fd].decode(data))
    except BaseException:  # a masker or sink that failed, a KeyboardInterrupt: none is
        kill_group(proc)  # left running, and the process is waited for
        _drain(proc)
        raise
    for pipe in (proc.stdout, proc.stderr):
        with contextlib.suppress(OSError):
            pipe.close()
    proc.wait()
    if failure is not None:
        failure.stdout, failure.stderr = capture.tail("stdout"), capture.tail("stderr")
        raise failure


def _killed(ctx: Context, timeout: float | None) -> TaskError:
    if ctx.scope.abort.is_set():
        return TaskError(
            "interrupted; killed its process group", retryable=False, reason="interrupted"
        )
    return TaskTimeout(f"timed out after {timeout:g}s; killed its process group")


def _clip(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _drain(proc: subprocess.Popen[bytes]) -> None:
    """Reap a process whose group was just killed before its output was read."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=DRAIN_S)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    proc.wait()


def _argv(body: Any, scope: dict[str, Any]) -> list[str]:
    return [templates.render_text(a, scope) for a in body]


def _shell(body: Any, scope: dict[str, Any]) -> list[str]:
    text = templates.render(body, scope, shell=True)
    return ["/bin/sh", "-c", text if isinstance(text, str) else str(text)]


def run_argv(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Printed:
    """``run: [cmd, arg, ...]``: the command, run without a shell."""
    return _run(node, _argv, state, ctx, timeout)


def run_shell(node: Node, state: Mapping[str, Any], ctx: Context, timeout: float | None) -> Printed:
    """``shell: script``: the script, run by ``/bin/sh -c``."""
    return _run(node, _shell, state, ctx, timeout)


def _run(
    node: Node,
    argv_of: Callable[[Any, dict[str, Any]], list[str]],
    state: Mapping[str, Any],
    ctx: Context,
    timeout: float | None,
) -> Printed:
    scope = template_scope(state, ctx)
    try:
        argv = argv_of(node.body, scope)
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
    try:  # noted by the coordinator, so a resume after kill -9 of flowrun can kill the group
        noted = None if ctx.effects is None else ctx.effects.proc_started(ctx, proc.pid)
    except BaseException:
        kill_group(proc)
        _drain(proc)
        ctx.scope.untrack(proc)
        raise
    capture = ctx.output or Capture(mask=ctx.scope.masker.text if ctx.scope.masker else None)
    # stdout is kept whole only when it becomes the result; otherwise only its tail
    keep: list[bytes] | None = [] if node.save or node.output == "json" else None
    try:
        _pump(proc, ctx, capture, keep, timeout)
    finally:
        ctx.scope.untrack(proc)
        if noted is not None and ctx.effects is not None:
            ctx.effects.proc_ended(ctx, noted)
    out_tail, err_tail = capture.tail("stdout"), capture.tail("stderr")
    if proc.returncode != 0:
        if proc.returncode < 0:
            why = f"killed by signal {-proc.returncode}"
        else:
            why = f"exit code {proc.returncode}"
        last = err_tail.strip().splitlines()
        detail = f": {_clip(last[-1])}" if last else ""
        failure = TaskError(f"command failed ({why}){detail}", reason="exit")
        if proc.returncode == -signal.SIGKILL and ctx.scope.abort.is_set():
            # the run's own kill at the end of the grace period, seen before the abort
            failure = TaskError(
                "interrupted; killed its process group", retryable=False, reason="interrupted"
            )
        failure.stdout, failure.stderr = out_tail, err_tail
        raise failure
    text = "" if keep is None else b"".join(keep).decode("utf-8", "replace")
    try:
        result = _convert(node, text)
    except TaskError as exc:  # output it cannot use: keep the tails to show why
        exc.stdout, exc.stderr = out_tail, err_tail
        raise
    return Printed(result, out_tail, err_tail)


BEGAN = 200  # characters of unparsable stdout quoted in the error


def _began(text: str) -> str:
    """How ``text`` began, on one line: its first characters, JSON-escaped, quoted."""
    head = json.dumps(text[:BEGAN], ensure_ascii=False)
    for brk in "\x85\u2028\u2029":  # line breaks to Python that JSON leaves as they are
        head = head.replace(brk, f"\\u{ord(brk):04x}")
    return head + ("…" if len(text) > BEGAN else "")


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
                "output: json, but stdout is empty"
                if not text.strip()
                else f"output: json, but stdout is not JSON"
                f" (line {exc.lineno} col {exc.colno}: {exc.msg});"
                f" it began: {_began(text)}",
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
