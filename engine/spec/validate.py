"""Turn a loaded YAML document into a :class:`Workflow`, or a precise error.

Every error names the file, line and column, starts with the offending key
(``nodes.fetch.next: unknown node 'sumarize'``) and suggests the near miss.
This module checks the document's shape: the top level, ``state``, ``config``,
each node's common keys and the graph they make. What a node kind's body may hold
is :mod:`.bodies`; the checks both use (types, durations, templates) are :mod:`.checks`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path as FsPath
from typing import Any

from ..errors import WorkflowError
from . import keys
from .bodies import check_body
from .checks import BOOL_HINT, Checker, describe, did_you_mean, masked, parse_duration
from .keys import ENV_NAME, NODE_NAME, POLICIES
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
from .yamlpos import Document, Path, decode, load

__all__ = ["NODE_NAME", "did_you_mean", "load_workflow", "parse_duration"]

TOP_KEYS = keys.names(keys.TOP)
STATE_KEYS = keys.names(keys.STATE)
CONFIG_KEYS = keys.names(keys.CONFIG)
RETRY_KEYS = keys.names(keys.RETRY)
COMMON_KEYS = keys.names(keys.COMMON)
COMMAND_KEYS = keys.names(keys.COMMAND)
ROUTE_KEYS = keys.names(keys.ROUTE)


def load_workflow(path: str | FsPath, text: str | None = None) -> Workflow:
    """Read, parse and validate a workflow file."""
    fs = FsPath(path)
    if text is None:
        try:
            raw = fs.read_bytes()
        except FileNotFoundError:
            raise WorkflowError(
                f"{fs}: no such file", hint="check the path (it is relative to this folder)"
            ) from None
        except IsADirectoryError:
            raise WorkflowError(f"{fs}: is a folder, not a workflow file") from None
        except OSError as exc:
            raise WorkflowError(f"{fs}: cannot read: {exc.strerror}") from None
        text = decode(raw, str(path))
    doc = load(text, str(path))
    return _Validator(doc, text, fs).workflow()


class _Validator(Checker):
    def __init__(self, doc: Document, text: str, fs: FsPath) -> None:
        super().__init__(doc)
        self.source = text
        self.fs = fs

    # the document ----------------------------------------------------------
    def workflow(self) -> Workflow:
        top = self.mapping(self.doc.data, (), hint="a workflow starts with `name:` and `nodes:`")
        self.known(top, TOP_KEYS, ())
        for required, example in (("name", "name: my-workflow"), ("nodes", "nodes:")):
            if required not in top:
                self.err((), f"missing required key {required!r}", hint=f"add `{example}`")
        name = self.text(top["name"], ("name",))
        if not name.strip():
            self.err(("name",), "the workflow name is empty")
        state = self.state(top.get("state") or {})
        config = self.config(top.get("config") or {})
        secrets = self.secrets(top.get("secrets"))
        raw_nodes = self.mapping(top["nodes"], ("nodes",))
        if not raw_nodes:
            self.err(("nodes",), "a workflow needs at least one node")
        for n in raw_nodes:
            if n == END:
                self.err(
                    ("nodes", n),
                    "END is reserved and cannot be a node name",
                    key=True,
                    label=("nodes",),
                    hint="`next: END` ends a branch; call the node something else",
                )
            if not NODE_NAME.match(n):
                self.err(
                    ("nodes", n),
                    f"bad node name {n!r}",
                    key=True,
                    label=("nodes",),
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
            joins={n: node.needs for n, node in nodes.items() if node.needs},
            secrets=secrets,
        )

    def secrets(self, raw: Any) -> tuple[str, ...]:
        """``secrets:``: names of environment variables whose values are masked."""
        if raw is None:
            return ()
        hint = "e.g. `secrets: [DEPLOY_TOKEN]`: the variable's name, not its value"
        if not isinstance(raw, list):
            self.err(
                ("secrets",), f"expected a list of variable names, not {describe(raw)}", hint=hint
            )
        for i, name in enumerate(raw):
            if not isinstance(name, str):
                self.err(
                    ("secrets", i), f"expected a variable name, not {describe(name)}", hint=hint
                )
            if not ENV_NAME.match(name):
                self.err(
                    ("secrets", i),
                    f"not an environment variable name: {masked(name)}",
                    hint="names match [A-Za-z_][A-Za-z0-9_]*; list the variable, not the secret",
                )
        return tuple(dict.fromkeys(raw))

    def state(self, raw: Any) -> dict[str, StateKey]:
        raw = self.mapping(raw, ("state",), hint="e.g. `state: {count: {default: 0}}`")
        out: dict[str, StateKey] = {}
        for key, spec in raw.items():
            path: Path = ("state", key)
            if spec is None:
                spec = {}
            if not isinstance(spec, dict):
                self.err(
                    path,
                    f"a state key is declared with a mapping, not {describe(spec)}",
                    hint=f"write `{key}: {{default: {json.dumps(spec)}}}`",
                )
            self.known(spec, STATE_KEYS, path)
            reducer = self.choice(
                spec.get("reducer", "replace"), (*path, "reducer"), REDUCERS, "reducer"
            )
            default = spec.get("default")
            if reducer in ("append", "extend") and default is None:
                default = []
            if reducer == "merge" and default is None:
                default = {}
            if reducer == "add" and default is None:
                default = 0
            if reducer in ("append", "extend") and not isinstance(default, list):
                self.err((*path, "default"), f"reducer {reducer} needs a list default")
            if reducer == "merge" and not isinstance(default, dict):
                self.err((*path, "default"), "reducer merge needs a mapping default")
            try:
                json.dumps(default, allow_nan=False)
            except (TypeError, ValueError):
                self.err((*path, "default"), "a state default must be a JSON value")
            out[key] = StateKey(key, default, reducer)
        return out

    def retry(self, raw: Any, path: Path, base: RetryPolicy) -> RetryPolicy:
        raw = self.mapping(raw, path, hint="e.g. `retry: {max_attempts: 3, backoff: 1s}`")
        self.known(raw, RETRY_KEYS, path)
        policy = RetryPolicy(
            max_attempts=self.pos_int(raw["max_attempts"], (*path, "max_attempts"))
            if "max_attempts" in raw
            else base.max_attempts,
            backoff=self.duration(raw["backoff"], (*path, "backoff"))
            if "backoff" in raw
            else base.backoff,
            max_backoff=self.duration(raw["max_backoff"], (*path, "max_backoff"))
            if "max_backoff" in raw
            else base.max_backoff,
            jitter=self.boolean(raw["jitter"], (*path, "jitter"))
            if "jitter" in raw
            else base.jitter,
        )
        return policy

    def config(self, raw: Any) -> Config:
        p: Path = ("config",)
        raw = self.mapping(raw, p)
        self.known(raw, CONFIG_KEYS, p)
        d = Config()
        policy = self.choice(
            raw.get("conflict_policy", d.conflict_policy),
            (*p, "conflict_policy"),
            POLICIES,
            "conflict_policy",
        )
        cost = raw.get("max_cost_usd")
        if cost is not None and (
            isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0
        ):
            self.err((*p, "max_cost_usd"), f"expected a number of dollars ≥ 0, got {cost!r}")
        timeout = d.timeout
        if "timeout" in raw:
            timeout = (
                None
                if raw["timeout"] is None
                else self.duration(raw["timeout"], (*p, "timeout"), positive=True)
            )
        return Config(
            max_concurrency=self.pos_int(
                raw.get("max_concurrency", d.max_concurrency), (*p, "max_concurrency")
            ),
            queue_depth=self.pos_int(raw.get("queue_depth", d.queue_depth), (*p, "queue_depth"), 0),
            max_steps=self.pos_int(raw.get("max_steps", d.max_steps), (*p, "max_steps")),
            conflict_policy=policy,
            timeout=timeout,
            retry=self.retry(raw["retry"], (*p, "retry"), d.retry) if "retry" in raw else d.retry,
            max_cost_usd=None if cost is None else float(cost),
        )

    def node_ref(self, value: Any, path: Path, names: list[str], *, allow_end: bool) -> str:
        if not isinstance(value, str):
            self.err(
                path,
                f"expected a node name, not {describe(value)}",
                hint=BOOL_HINT if isinstance(value, bool) else None,
            )
        if value == END and allow_end:
            return END
        if value not in names:
            choices = [*names, END] if allow_end else names
            what = "END cannot be used here" if value == END else f"unknown node {value!r}"
            self.err(
                path,
                what,
                hint=did_you_mean(value, choices) or f"nodes: {', '.join(names)}",
            )
        return value

    def refs(self, value: Any, path: Path, names: list[str], *, allow_end: bool) -> tuple[str, ...]:
        if isinstance(value, list):
            if not value:
                self.err(path, "an empty list of nodes")
            return tuple(
                self.node_ref(v, (*path, i), names, allow_end=allow_end)
                for i, v in enumerate(value)
            )
        return (self.node_ref(value, path, names, allow_end=allow_end),)

    def kind_of(self, name: str, raw: dict[str, Any]) -> str:
        path: Path = ("nodes", name)
        kinds = [k for k in raw if k in KINDS]
        if not kinds:
            others = (*COMMON_KEYS, *COMMAND_KEYS)
            for k in raw:
                near = did_you_mean(k, KINDS)
                if k not in others and near:
                    self.unknown(path, k, KINDS, hint=near)
            self.err(
                path,
                "a node needs a kind",
                key=True,
                hint=f"give it exactly one of: {', '.join(KINDS)}",
            )
        if len(kinds) > 1:
            self.err(
                (*path, kinds[1]),
                f"a node has one kind, this one has two: {kinds[0]} and {kinds[1]}",
                key=True,
                label=path,
                hint="split it into two nodes joined by `next`",
            )
        return kinds[0]

    def routes(
        self, raw: Any, path: Path, names: list[str], state: dict[str, StateKey], foreach: bool
    ) -> tuple[Route, ...]:
        if not isinstance(raw, list) or not raw:
            self.err(path, "routes must be a non-empty list of {when, to}")
        out: list[Route] = []
        default_at: int | None = None
        for i, r in enumerate(raw):
            rp: Path = (*path, i)
            r = self.mapping(r, rp, hint="e.g. `- {when: 'state.n > 0', to: next_node}`")
            self.known(r, ROUTE_KEYS, rp)
            if default_at is not None:
                self.err(
                    rp,
                    f"this route is never taken: routes[{default_at}] has no `when`",
                    hint="routes are tried in order; put the default last",
                )
            if "to" not in r:
                self.err(rp, "a route needs 'to'", hint="e.g. `- {when: ..., to: node}`")
            when = r.get("when")
            if when is None:
                default_at = i
            else:
                if isinstance(when, bool):
                    when = "true" if when else "false"
                when = self.text(when, (*rp, "when"))
                self.template(when, (*rp, "when"), state, foreach=foreach, condition=True)
            out.append(Route(self.refs(r["to"], (*rp, "to"), names, allow_end=True), when))
        return tuple(out)

    def node(
        self, name: str, raw: Any, names: list[str], state: dict[str, StateKey], config: Config
    ) -> Node:
        path: Path = ("nodes", name)
        raw = self.mapping(raw, path, hint="e.g. `fetch: {shell: 'echo hi'}`")
        kind = self.kind_of(name, raw)
        allowed = (kind, *COMMON_KEYS, *(COMMAND_KEYS if kind in keys.COMMAND_KINDS else ()))
        for k in raw:
            if k in COMMAND_KEYS and k not in allowed:
                self.unknown(path, k, allowed, hint=f"{k} applies only to run and shell nodes")
            if k not in allowed:
                self.unknown(path, k, allowed)
        foreach_node = "foreach" in raw
        body = check_body(self, kind, raw[kind], (*path, kind), state, foreach_node)
        nxt: tuple[str, ...] = ()
        routes: tuple[Route, ...] = ()
        if "next" in raw and "routes" in raw:
            second = "routes" if list(raw).index("routes") > list(raw).index("next") else "next"
            self.err(
                (*path, second),
                "a node has either next or routes, not both",
                key=True,
                hint="add a route without `when` as the default instead of next",
            )
        if "next" in raw:
            nxt = self.refs(raw["next"], (*path, "next"), names, allow_end=True)
        if "routes" in raw:
            routes = self.routes(raw["routes"], (*path, "routes"), names, state, foreach_node)
        needs: tuple[str, ...] = ()
        if "needs" in raw:
            needs = self.refs(raw["needs"], (*path, "needs"), names, allow_end=False)
            if name in needs:
                self.err((*path, "needs"), f"node {name!r} needs itself")
        foreach = raw.get("foreach")
        if foreach_node:
            if isinstance(foreach, str):
                self.template(foreach, (*path, "foreach"), state, foreach=False)
            elif not isinstance(foreach, list):
                self.err(
                    (*path, "foreach"),
                    f"foreach takes a list or a template that yields one, not {describe(foreach)}",
                    hint='e.g. `foreach: "{{ state.items }}"`',
                )
        save = raw.get("save")
        if save is not None:
            save = self.text(save, (*path, "save"))
            if save not in state:
                self.err(
                    (*path, "save"),
                    f"save names undeclared state key {save!r}",
                    hint=did_you_mean(save, state) or "declare it under `state:`",
                )
        output = self.choice(raw.get("output", "text"), (*path, "output"), OUTPUTS, "output")
        env = self.mapping(raw.get("env") or {}, (*path, "env"), hint="e.g. `env: {LANG: C}`")
        env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
        self.templates_in(env, (*path, "env"), state, foreach=foreach_node)
        cwd = raw.get("cwd")
        if cwd is not None:
            cwd = self.text(cwd, (*path, "cwd"))
            self.template(cwd, (*path, "cwd"), state, foreach=foreach_node)
        timeout = config.timeout
        if "timeout" in raw:
            timeout = (
                None
                if raw["timeout"] is None
                else self.duration(raw["timeout"], (*path, "timeout"), positive=True)
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
            output=output,
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
                    f"node {n!r} is unreachable from start ({', '.join(start)})",
                    key=True,
                    hint="route to it from another node, list it in `start`, or remove it",
                )
