"""Turn a loaded YAML document into a :class:`Workflow`, or a precise error.

Every check names the file, line, column and key, and suggests the near miss.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path as FsPath
from typing import Any

from ..errors import WorkflowError
from . import templates
from .model import (
    END,
    KINDS,
    OUTPUTS,
    REDUCERS,
    Config,
    Node,
    RetryPolicy,
    Route,
    StateKey,
    Workflow,
)
from .yamlpos import Document, Path, load

NODE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

TOP_KEYS = ("name", "description", "state", "config", "start", "nodes")
STATE_KEYS = ("default", "reducer", "description")
CONFIG_KEYS = (
    "max_concurrency",
    "queue_depth",
    "max_steps",
    "conflict_policy",
    "timeout",
    "retry",
    "max_cost_usd",
)
RETRY_KEYS = ("max_attempts", "backoff", "max_backoff", "jitter")
COMMON_KEYS = ("next", "routes", "needs", "foreach", "save", "retry", "timeout", "description")
COMMAND_KEYS = ("output", "env", "cwd")
LLM_KEYS = (
    "model",
    "prompt",
    "system",
    "provider",
    "temperature",
    "max_tokens",
    "json",
    "base_url",
    "api_key_env",
    "cassette",
)
ROUTE_KEYS = ("when", "to")


def parse_duration(value: Any) -> float:
    """``250ms``, ``30s``, ``5m``, ``1h`` (or a bare number of seconds) to seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("negative duration")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("not a duration")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def load_workflow(path: str | FsPath, text: str | None = None) -> Workflow:
    """Read, parse and validate a workflow file."""
    fs = FsPath(path)
    if text is None:
        try:
            raw = fs.read_bytes()
        except FileNotFoundError:
            raise WorkflowError(f"{fs}: no such file", hint="check the path") from None
        except OSError as exc:
            raise WorkflowError(f"{fs}: cannot read: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WorkflowError(f"{fs}: not UTF-8 text") from None
    doc = load(text, str(path))
    return _Validator(doc, text, fs).workflow()


class _Validator:
    def __init__(self, doc: Document, text: str, fs: FsPath) -> None:
        self.doc = doc
        self.source = text
        self.fs = fs

    # helpers -------------------------------------------------------------
    def err(self, path: Path, msg: str, *, key: bool = False, hint: str | None = None) -> None:
        raise self.doc.error(path, msg, key=key, hint=hint)

    def mapping(self, value: Any, path: Path, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.err(path, f"{what} must be a mapping, not {_kind(value)}")
        return value  # type: ignore[no-any-return]

    def known(self, value: dict[str, Any], allowed: Iterable[str], path: Path, what: str) -> None:
        allowed = tuple(allowed)
        for k in value:
            if k not in allowed:
                self.err(
                    (*path, k),
                    f"unknown key {k!r} in {what}",
                    key=True,
                    hint=did_you_mean(k, allowed) or f"allowed: {', '.join(allowed)}",
                )

    def duration(self, value: Any, path: Path) -> float:
        try:
            return parse_duration(value)
        except ValueError:
            self.err(path, f"bad duration {value!r}", hint="use e.g. 250ms, 30s, 5m or 1h")
        raise AssertionError  # pragma: no cover

    def pos_int(self, value: Any, path: Path, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.err(path, f"expected an integer ≥ {minimum}, got {value!r}")
        return int(value)

    def text(self, value: Any, path: Path, what: str) -> str:
        if not isinstance(value, str):
            self.err(path, f"{what} must be a string, not {_kind(value)}")
        return str(value)

    # the document ----------------------------------------------------------
    def workflow(self) -> Workflow:
        top = self.mapping(self.doc.data, (), "a workflow")
        self.known(top, TOP_KEYS, (), "the workflow")
        if "name" not in top:
            self.err((), "missing required key 'name'", hint="add `name: my-workflow`")
        name = self.text(top["name"], ("name",), "name")
        if "nodes" not in top:
            self.err((), "missing required key 'nodes'", hint="add a `nodes:` mapping")
        state = self.state(top.get("state") or {})
        config = self.config(top.get("config") or {})
        raw_nodes = self.mapping(top["nodes"], ("nodes",), "nodes")
        if not raw_nodes:
            self.err(("nodes",), "a workflow needs at least one node")
        for n in raw_nodes:
            if n == END:
                self.err(("nodes", n), "END is reserved and cannot be a node name", key=True)
            if not NODE_NAME.match(n):
                self.err(
                    ("nodes", n),
                    f"bad node name {n!r}",
                    key=True,
                    hint="node names match [A-Za-z_][A-Za-z0-9_-]*",
                )
        names = list(raw_nodes)
        nodes = {n: self.node(n, raw_nodes[n], names, state, config) for n in names}
        start = self.start(top.get("start"), names)
        self.reachable(start, nodes)
        desc = top.get("description")
        return Workflow(
            name=name,
            description=None if desc is None else str(desc),
            state=state,
            nodes=nodes,
            start=start,
            config=config,
            source=self.source,
            digest=hashlib.sha256(self.source.encode()).hexdigest(),
            path=str(self.fs),
            base_dir=self.fs.resolve().parent,
        )

    def state(self, raw: Any) -> dict[str, StateKey]:
        raw = self.mapping(raw, ("state",), "state")
        out: dict[str, StateKey] = {}
        for key, spec in raw.items():
            path: Path = ("state", key)
            if spec is None:
                spec = {}
            spec = self.mapping(spec, path, f"state key {key!r}")
            self.known(spec, STATE_KEYS, path, f"state key {key!r}")
            reducer = spec.get("reducer", "replace")
            if reducer not in REDUCERS:
                self.err(
                    (*path, "reducer"),
                    f"unknown reducer {reducer!r}",
                    hint=did_you_mean(str(reducer), REDUCERS) or f"one of: {', '.join(REDUCERS)}",
                )
            default = spec.get("default")
            if reducer in ("append", "extend") and default is None:
                default = []
            if reducer == "merge" and default is None:
                default = {}
            if reducer in ("append", "extend") and not isinstance(default, list):
                self.err((*path, "default"), f"reducer {reducer} needs a list default")
            if reducer == "merge" and not isinstance(default, dict):
                self.err((*path, "default"), "reducer merge needs a mapping default")
            if reducer == "add" and default is None:
                default = 0
            try:
                json.dumps(default)
            except (TypeError, ValueError):
                self.err((*path, "default"), "state defaults must be JSON values")
            out[key] = StateKey(key, default, reducer)
        return out

    def retry(self, raw: Any, path: Path, base: RetryPolicy) -> RetryPolicy:
        raw = self.mapping(raw, path, "retry")
        self.known(raw, RETRY_KEYS, path, "retry")
        return RetryPolicy(
            max_attempts=self.pos_int(raw["max_attempts"], (*path, "max_attempts"))
            if "max_attempts" in raw
            else base.max_attempts,
            backoff=self.duration(raw["backoff"], (*path, "backoff"))
            if "backoff" in raw
            else base.backoff,
            max_backoff=self.duration(raw["max_backoff"], (*path, "max_backoff"))
            if "max_backoff" in raw
            else base.max_backoff,
            jitter=bool(raw.get("jitter", base.jitter)),
        )

    def config(self, raw: Any) -> Config:
        p: Path = ("config",)
        raw = self.mapping(raw, p, "config")
        self.known(raw, CONFIG_KEYS, p, "config")
        d = Config()
        policy = raw.get("conflict_policy", d.conflict_policy)
        if policy not in ("fail", "last_writer_wins"):
            self.err(
                (*p, "conflict_policy"),
                f"unknown conflict_policy {policy!r}",
                hint=did_you_mean(str(policy), ("fail", "last_writer_wins"))
                or "fail or last_writer_wins",
            )
        cost = raw.get("max_cost_usd")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
            self.err((*p, "max_cost_usd"), f"max_cost_usd must be a number, got {cost!r}")
        timeout = d.timeout
        if "timeout" in raw:
            timeout = (
                None if raw["timeout"] is None else self.duration(raw["timeout"], (*p, "timeout"))
            )
        return Config(
            max_concurrency=self.pos_int(
                raw.get("max_concurrency", d.max_concurrency), (*p, "max_concurrency")
            ),
            queue_depth=self.pos_int(raw.get("queue_depth", d.queue_depth), (*p, "queue_depth"), 0),
            max_steps=self.pos_int(raw.get("max_steps", d.max_steps), (*p, "max_steps")),
            conflict_policy=str(policy),
            timeout=timeout,
            retry=self.retry(raw["retry"], (*p, "retry"), d.retry) if "retry" in raw else d.retry,
            max_cost_usd=None if cost is None else float(cost),
        )

    def node_ref(self, value: Any, path: Path, names: list[str], *, allow_end: bool) -> str:
        if not isinstance(value, str):
            self.err(path, f"expected a node name, got {_kind(value)}")
        if value == END and allow_end:
            return END
        if value not in names:
            choices = [*names, END] if allow_end else names
            self.err(
                path,
                f"unknown node {value!r}",
                hint=did_you_mean(value, choices) or f"nodes: {', '.join(names)}",
            )
        return str(value)

    def refs(self, value: Any, path: Path, names: list[str], *, allow_end: bool) -> tuple[str, ...]:
        if isinstance(value, list):
            if not value:
                self.err(path, "an empty list of nodes")
            return tuple(
                self.node_ref(v, (*path, i), names, allow_end=allow_end)
                for i, v in enumerate(value)
            )
        return (self.node_ref(value, path, names, allow_end=allow_end),)

    def template(
        self,
        value: str,
        path: Path,
        state: dict[str, StateKey],
        *,
        foreach: bool,
        condition: bool = False,
    ) -> None:
        if not condition and not templates.is_template(value):
            return
        try:
            names, keys = templates.references(value, condition=condition)
        except templates.TemplateError as exc:
            self.err(path, f"bad template: {exc}")
        allowed = set(templates.NAMES) if foreach else set(templates.NAMES) - {"item", "index"}
        for n in sorted(names - allowed):
            hint = did_you_mean(n, allowed)
            if n in ("item", "index"):
                hint = "item and index exist only in a node with foreach"
            self.err(
                path,
                f"template uses undefined name {n!r}",
                hint=hint or f"templates see {', '.join(sorted(allowed))}",
            )
        for k in sorted(keys - set(state)):
            self.err(
                path,
                f"template reads undeclared state key {k!r}",
                hint=did_you_mean(k, state) or "declare it under `state:`",
            )

    def templates_in(
        self, value: Any, path: Path, state: dict[str, StateKey], *, foreach: bool
    ) -> None:
        if isinstance(value, str):
            self.template(value, path, state, foreach=foreach)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.templates_in(v, (*path, i), state, foreach=foreach)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.templates_in(v, (*path, k), state, foreach=foreach)

    def node(
        self, name: str, raw: Any, names: list[str], state: dict[str, StateKey], config: Config
    ) -> Node:
        path: Path = ("nodes", name)
        raw = self.mapping(raw, path, f"node {name!r}")
        kinds = [k for k in KINDS if k in raw]
        if not kinds:
            self.err(
                path,
                f"node {name!r} has no kind",
                key=True,
                hint=f"give it exactly one of: {', '.join(KINDS)}",
            )
        if len(kinds) > 1:
            self.err(
                (*path, kinds[1]),
                f"node {name!r} has two kinds: {kinds[0]} and {kinds[1]}",
                key=True,
            )
        kind = kinds[0]
        allowed = [kind, *COMMON_KEYS]
        if kind in ("run", "shell"):
            allowed += COMMAND_KEYS
        self.known(raw, allowed, path, f"node {name!r}")
        has_foreach = "foreach" in raw
        kp: Path = (*path, kind)
        body = raw[kind]
        if kind == "run":
            if isinstance(body, str):
                self.err(
                    kp, "run takes an argv list", hint='use `run: [cmd, arg]` or `shell: "..."`'
                )
            if not isinstance(body, list) or not body:
                self.err(kp, "run takes a non-empty argv list")
            for i, a in enumerate(body):
                if isinstance(a, dict | list) or a is None:
                    self.err((*kp, i), "argv items must be strings or numbers")
            body = [str(a) if not isinstance(a, str) else a for a in body]
            self.templates_in(body, kp, state, foreach=has_foreach)
        elif kind == "shell":
            body = self.text(body, kp, "shell")
            self.templates_in(body, kp, state, foreach=has_foreach)
        elif kind == "python":
            body = self.text(body, kp, "python")
            if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", body):
                self.err(
                    kp, f"bad python target {body!r}", hint="use module:function, e.g. lib:judge"
                )
        elif kind == "set":
            body = self.mapping(body, kp, "set")
            for k in body:
                if k not in state:
                    self.err(
                        (*kp, k),
                        f"set writes undeclared state key {k!r}",
                        key=True,
                        hint=did_you_mean(k, state) or "declare it under `state:`",
                    )
            self.templates_in(body, kp, state, foreach=has_foreach)
        elif kind == "llm":
            body = self.mapping(body, kp, "llm")
            self.known(body, LLM_KEYS, kp, "llm")
            for req in ("model", "prompt"):
                if req not in body:
                    self.err(kp, f"llm needs {req!r}", key=True)
            for k in ("prompt", "system"):
                if k in body:
                    self.template(
                        self.text(body[k], (*kp, k), k), (*kp, k), state, foreach=has_foreach
                    )
        nxt: tuple[str, ...] = ()
        routes: tuple[Route, ...] = ()
        if "next" in raw and "routes" in raw:
            self.err((*path, "routes"), "a node has either next or routes, not both", key=True)
        if "next" in raw:
            nxt = self.refs(raw["next"], (*path, "next"), names, allow_end=True)
        if "routes" in raw:
            rp: Path = (*path, "routes")
            if not isinstance(raw["routes"], list) or not raw["routes"]:
                self.err(rp, "routes must be a non-empty list of {when, to}")
            out = []
            for i, r in enumerate(raw["routes"]):
                r = self.mapping(r, (*rp, i), "a route")
                self.known(r, ROUTE_KEYS, (*rp, i), "a route")
                if "to" not in r:
                    self.err((*rp, i), "a route needs 'to'", hint="e.g. `- {when: ..., to: node}`")
                when = r.get("when")
                if when is not None:
                    if isinstance(when, bool):
                        when = "true" if when else "false"
                    when = self.text(when, (*rp, i, "when"), "when")
                    self.template(
                        when, (*rp, i, "when"), state, foreach=has_foreach, condition=True
                    )
                out.append(Route(self.refs(r["to"], (*rp, i, "to"), names, allow_end=True), when))
            routes = tuple(out)
        needs: tuple[str, ...] = ()
        if "needs" in raw:
            needs = self.refs(raw["needs"], (*path, "needs"), names, allow_end=False)
            if name in needs:
                self.err((*path, "needs"), f"node {name!r} needs itself")
        foreach = raw.get("foreach")
        if "foreach" in raw:
            if isinstance(foreach, str):
                self.template(foreach, (*path, "foreach"), state, foreach=False)
            elif not isinstance(foreach, list):
                self.err((*path, "foreach"), "foreach takes a list or a template that yields one")
        save = raw.get("save")
        if save is not None:
            save = self.text(save, (*path, "save"), "save")
            if save not in state:
                self.err(
                    (*path, "save"),
                    f"save names undeclared state key {save!r}",
                    hint=did_you_mean(save, state) or "declare it under `state:`",
                )
        output = raw.get("output", "text")
        if output not in OUTPUTS:
            self.err(
                (*path, "output"),
                f"unknown output {output!r}",
                hint=did_you_mean(str(output), OUTPUTS) or f"one of: {', '.join(OUTPUTS)}",
            )
        env = raw.get("env") or {}
        env = self.mapping(env, (*path, "env"), "env")
        env = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
        self.templates_in(env, (*path, "env"), state, foreach=has_foreach)
        cwd = raw.get("cwd")
        if cwd is not None:
            cwd = self.text(cwd, (*path, "cwd"), "cwd")
        timeout = config.timeout
        if "timeout" in raw:
            timeout = (
                None
                if raw["timeout"] is None
                else self.duration(raw["timeout"], (*path, "timeout"))
            )
        retry = (
            self.retry(raw["retry"], (*path, "retry"), config.retry)
            if "retry" in raw
            else config.retry
        )
        desc = raw.get("description")
        return Node(
            name=name,
            kind=kind,
            body=body,
            next=nxt,
            routes=routes,
            needs=needs,
            foreach=foreach,
            save=save,
            output=str(output),
            env=env,
            cwd=cwd,
            retry=retry,
            timeout=timeout,
            description=None if desc is None else str(desc),
        )

    def start(self, raw: Any, names: list[str]) -> tuple[str, ...]:
        if raw is None:
            return (names[0],)
        return self.refs(raw, ("start",), names, allow_end=False)

    def reachable(self, start: tuple[str, ...], nodes: dict[str, Node]) -> None:
        seen = set(start)
        todo = list(start)
        while todo:
            for t in nodes[todo.pop()].targets():
                if t != END and t not in seen:
                    seen.add(t)
                    todo.append(t)
        for n in nodes:
            if n not in seen:
                self.err(
                    ("nodes", n),
                    f"node {n!r} is unreachable from start",
                    key=True,
                    hint="route to it from another node, or remove it",
                )


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)
