"""Turn a loaded YAML document into a :class:`Workflow`, or a precise error.

Every error names the file, line and column, starts with the offending key
(``nodes.fetch.next: unknown node 'sumarize'``) and suggests the near miss.
This module checks the document's shape: the top level, ``state``, ``config``,
each node's common keys and the graph they make. What a node kind's body may hold
is its kind's (:mod:`flowrun.engine.nodes.registry`, whose hooks live in :mod:`.bodies`);
the checks both use (types, durations, templates) are :mod:`.checks`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path as FsPath
from typing import Any

from ..errors import WorkflowError
from ..nodes.registry import KINDS, kind_keys, taken_by
from . import keys, pytarget
from .bodies import Site
from .checks import BOOL_HINT, Checker, describe, did_you_mean, masked, parse_duration
from .keys import ENV_NAME, NODE_NAME, POLICIES
from .model import (
    END,
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

__all__ = ["NODE_NAME", "did_you_mean", "file_changed", "load_workflow", "parse_duration"]

TOP_KEYS = keys.names(keys.TOP)
STATE_KEYS = keys.names(keys.STATE)
CONFIG_KEYS = keys.names(keys.CONFIG)
RETRY_KEYS = keys.names(keys.RETRY)
COMMON_KEYS = keys.names(keys.COMMON)
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


def file_changed(workflow: Workflow) -> bool:
    """Whether the file at ``workflow.path`` now holds other text than the workflow's.

    A file that is gone or unreadable has not changed: there is nothing else to use.
    """
    try:
        raw = FsPath(workflow.path).read_bytes()
    except OSError:
        return False
    return hashlib.sha256(raw).hexdigest() != workflow.digest


class _Validator(Checker):
    def __init__(self, doc: Document, text: str, fs: FsPath) -> None:
        super().__init__(doc)
        self.source = text
        self.fs = fs
        self.base_dir = fs.resolve().parent
        self.targets = pytarget.Targets(self.base_dir)
        # False once an edge was dropped (an unknown node, a bad route, a node that
        # failed to load): the graph-wide checks would then report the error's echoes
        self.edges_whole = True
        self.node_names: frozenset[str] = frozenset()
        self.only_some = kind_keys()  # asked once per file, not once per node
        self.allowed: dict[str, tuple[str, ...]] = {}  # a kind's node keys, by kind

    # the document ----------------------------------------------------------
    def workflow(self) -> Workflow:
        """The workflow, or every error found in it (some errors end the search early)."""
        top = self.mapping(self.doc.data, (), hint="a workflow starts with `name:` and `nodes:`")
        self.known(top, TOP_KEYS, ())
        for required, example in (("name", "name: my-workflow"), ("nodes", "nodes:")):
            misspelt = any(did_you_mean(k, [required]) for k in top if k not in TOP_KEYS)
            if required not in top and not misspelt:  # else the unknown key's error says it
                self.report((), f"missing required key {required!r}", hint=f"add `{example}`")
        name = ""
        if "name" in top:
            with self.collect():
                name = self.text(top["name"], ("name",))
                if not name.strip():
                    self.report(("name",), "the workflow name is empty")
        state: dict[str, StateKey] = {}
        with self.collect() as section:
            state = self.state(top.get("state") or {})
        if section.failed:  # every state key read would be reported as undeclared
            self.raise_found()
        config = Config()
        with self.collect():
            config = self.config(top.get("config") or {})
        secrets: tuple[str, ...] = ()
        with self.collect():
            secrets = self.secrets(top.get("secrets"))
        if "nodes" not in top:
            self.raise_found()
        raw_nodes: dict[str, Any] = {}
        with self.collect():
            raw_nodes = self.mapping(top["nodes"], ("nodes",))
            if not raw_nodes:
                self.report(("nodes",), "a workflow needs at least one node")
        if not raw_nodes:
            self.raise_found()
        for n in raw_nodes:
            if n == END:
                self.report(
                    ("nodes", n),
                    "END is reserved and cannot be a node name",
                    key=True,
                    label=("nodes",),
                    hint="`next: END` ends a branch; call the node something else",
                )
            if not NODE_NAME.match(n):
                self.report(
                    ("nodes", n),
                    f"bad node name {n!r}",
                    key=True,
                    label=("nodes",),
                    hint="node names match [A-Za-z_][A-Za-z0-9_-]*",
                )
        names = list(raw_nodes)
        self.node_names = frozenset(names)  # for node_ref: a set, not the list
        nodes: dict[str, Node] = {}
        for n in names:
            with self.collect() as section:
                nodes[n] = self.node(n, raw_nodes[n], names, state, config)
            if section.failed:
                self.edges_whole = False
        start: tuple[str, ...] = ()
        with self.collect():
            start = self.start(top.get("start"), names)
        if self.edges_whole:
            self.reachable(start, nodes)
            self.joins(start, nodes)
        self.raise_found()
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
            base_dir=self.base_dir,
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
                self.report(
                    ("secrets", i), f"expected a variable name, not {describe(name)}", hint=hint
                )
            elif not ENV_NAME.match(name):
                self.report(
                    ("secrets", i),
                    f"not an environment variable name: {masked(name)}",
                    hint="names match [A-Za-z_][A-Za-z0-9_]*; list the variable, not the secret",
                )
        return tuple(dict.fromkeys(n for n in raw if isinstance(n, str) and ENV_NAME.match(n)))

    def state(self, raw: Any) -> dict[str, StateKey]:
        raw = self.mapping(raw, ("state",), hint="e.g. `state: {count: {default: 0}}`")
        out: dict[str, StateKey] = {}
        for key, spec in raw.items():
            out[key] = StateKey(key, None, "replace")  # declared, even if its spec is wrong
            with self.collect():
                out[key] = self.state_key(key, spec)
        return out

    def state_key(self, key: str, spec: Any) -> StateKey:
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
        return StateKey(key, default, reducer)

    def retry(self, raw: Any, path: Path, base: RetryPolicy) -> RetryPolicy:
        raw = self.mapping(raw, path, hint="e.g. `retry: {max_attempts: 3, backoff: 1s}`")
        self.known(raw, RETRY_KEYS, path)
        max_attempts, backoff, max_backoff, jitter = (
            base.max_attempts,
            base.backoff,
            base.max_backoff,
            base.jitter,
        )
        with self.collect():
            if "max_attempts" in raw:
                max_attempts = self.pos_int(raw["max_attempts"], (*path, "max_attempts"))
        with self.collect():
            if "backoff" in raw:
                backoff = self.duration(raw["backoff"], (*path, "backoff"))
        with self.collect():
            if "max_backoff" in raw:
                max_backoff = self.duration(raw["max_backoff"], (*path, "max_backoff"))
        with self.collect():
            if "jitter" in raw:
                jitter = self.boolean(raw["jitter"], (*path, "jitter"))
        return RetryPolicy(
            max_attempts=max_attempts, backoff=backoff, max_backoff=max_backoff, jitter=jitter
        )

    def config(self, raw: Any) -> Config:
        p: Path = ("config",)
        raw = self.mapping(raw, p)
        self.known(raw, CONFIG_KEYS, p)
        d = Config()
        policy, cost, timeout, retry = d.conflict_policy, d.max_cost_usd, d.timeout, d.retry
        with self.collect():
            policy = self.choice(
                raw.get("conflict_policy", d.conflict_policy),
                (*p, "conflict_policy"),
                POLICIES,
                "conflict_policy",
            )
        given = raw.get("max_cost_usd")
        if given is not None and (
            isinstance(given, bool) or not isinstance(given, int | float) or not given >= 0
        ):
            self.report((*p, "max_cost_usd"), f"expected a number of dollars ≥ 0, got {given!r}")
        elif given is not None:
            cost = float(given)
        with self.collect():
            if "timeout" in raw:
                timeout = (
                    None
                    if raw["timeout"] is None
                    else self.duration(raw["timeout"], (*p, "timeout"), positive=True)
                )
        counts = {"max_concurrency": 1, "queue_depth": 0, "max_steps": 1}  # key: its minimum
        whole = {k: getattr(d, k) for k in counts}
        for k, minimum in counts.items():
            with self.collect():
                whole[k] = self.pos_int(raw.get(k, whole[k]), (*p, k), minimum)
        with self.collect():
            if "retry" in raw:
                retry = self.retry(raw["retry"], (*p, "retry"), d.retry)
        return Config(
            max_concurrency=whole["max_concurrency"],
            queue_depth=whole["queue_depth"],
            max_steps=whole["max_steps"],
            conflict_policy=policy,
            timeout=timeout,
            retry=retry,
            max_cost_usd=cost,
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
        if value not in self.node_names:
            choices = [*names, END] if allow_end else names
            what = "END cannot be used here" if value == END else f"unknown node {value!r}"
            near = did_you_mean(value, choices)
            if allow_end and value.upper() == END and value not in self.node_names:
                near = f"did you mean {END!r}? (END is written in capitals)"
            self.err(path, what, hint=near or f"nodes: {', '.join(names)}")
        return value

    def refs(self, value: Any, path: Path, names: list[str], *, allow_end: bool) -> tuple[str, ...]:
        """The nodes ``value`` names; a bad one is reported and left out."""
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        if not items:
            self.err(path, "an empty list of nodes")
        out: list[str] = []
        for i, v in items:
            with self.collect() as section:
                out.append(
                    self.node_ref(v, path if i is None else (*path, i), names, allow_end=allow_end)
                )
            if section.failed:
                self.edges_whole = False
        return tuple(out)

    def kind_of(self, name: str, raw: dict[str, Any]) -> str:
        path: Path = ("nodes", name)
        kinds = [k for k in raw if k in KINDS]
        if not kinds:
            others = (*COMMON_KEYS, *kind_keys())
            for k in raw:
                near = did_you_mean(k, KINDS)
                if k not in others and near:
                    # the typo is the cause; "a node needs a kind" would only echo it
                    self.unknown(path, k, tuple(KINDS), hint=near, stop=True)
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
            if default_at is not None:
                self.report(
                    rp,
                    f"this route is never taken: routes[{default_at}] has no `when`",
                    hint="routes are tried in order; put the default last",
                )
            with self.collect() as section:
                route = self.route(r, rp, names, state, foreach)
                out.append(route)
                if route.when is None and default_at is None:
                    default_at = i
            if section.failed:
                self.edges_whole = False
        return tuple(out)

    def route(
        self, raw: Any, path: Path, names: list[str], state: dict[str, StateKey], foreach: bool
    ) -> Route:
        r = self.mapping(raw, path, hint="e.g. `- {when: 'state.n > 0', to: next_node}`")
        self.known(r, ROUTE_KEYS, path)
        if "to" not in r:
            self.err(path, "a route needs 'to'", hint="e.g. `- {when: ..., to: node}`")
        when = r.get("when")
        if when is not None:
            if isinstance(when, bool):
                when = "true" if when else "false"
            when = self.text(when, (*path, "when"))
            self.template(when, (*path, "when"), state, foreach=foreach, condition=True)
        return Route(self.refs(r["to"], (*path, "to"), names, allow_end=True), when)

    def node(
        self, name: str, raw: Any, names: list[str], state: dict[str, StateKey], config: Config
    ) -> Node:
        path: Path = ("nodes", name)
        raw = self.mapping(raw, path, hint="e.g. `fetch: {shell: 'echo hi'}`")
        kind = KINDS[self.kind_of(name, raw)]
        allowed = self.allowed.get(kind.name)
        if allowed is None:
            allowed = self.allowed[kind.name] = (kind.name, *COMMON_KEYS, *keys.names(kind.keys))
        only_some = self.only_some
        for k in raw:
            if k in only_some and k not in allowed:
                self.unknown(path, k, allowed, hint=f"{k} applies only to {_kinds(k)} nodes")
            elif k not in allowed:
                self.unknown(path, k, allowed)
        foreach_node = "foreach" in raw
        at: Path = (*path, kind.name)
        body = raw[kind.name]
        with self.collect():
            body = kind.check_body(self, body, Site(at, state, foreach_node, self.targets))
        kind.after_validate(self, raw, body, at, state)
        nxt: tuple[str, ...] = ()
        routes: tuple[Route, ...] = ()
        if "next" in raw and "routes" in raw:
            second = "routes" if list(raw).index("routes") > list(raw).index("next") else "next"
            self.report(
                (*path, second),
                "a node has either next or routes, not both",
                key=True,
                hint="add a route without `when` as the default instead of next",
            )
        # each block below runs only where its key is given (a node gives few of them)
        if "next" in raw:
            with self.collect() as section:
                nxt = self.refs(raw["next"], (*path, "next"), names, allow_end=True)
            if section.failed:
                self.edges_whole = False
        if "routes" in raw:
            with self.collect() as section:
                routes = self.routes(raw["routes"], (*path, "routes"), names, state, foreach_node)
            if section.failed:
                self.edges_whole = False
        needs: tuple[str, ...] = ()
        if "needs" in raw:
            with self.collect():
                needs = self.refs(raw["needs"], (*path, "needs"), names, allow_end=False)
                if name in needs:
                    self.report((*path, "needs"), f"node {name!r} needs itself")
        foreach = raw.get("foreach")
        if foreach_node:
            if isinstance(foreach, str):
                self.template(foreach, (*path, "foreach"), state, foreach=False)
            elif not isinstance(foreach, list):
                self.report(
                    (*path, "foreach"),
                    f"foreach takes a list or a template that yields one, not {describe(foreach)}",
                    hint='e.g. `foreach: "{{ state.items }}"`',
                )
        save = None
        if raw.get("save") is not None:
            with self.collect():
                save = self.text(raw["save"], (*path, "save"))
                if save not in state:
                    self.report(
                        (*path, "save"),
                        f"save names undeclared state key {save!r}",
                        hint=did_you_mean(save, state) or "declare it under `state:`",
                    )
        output = "text"
        if "output" in raw:
            with self.collect():
                output = self.choice(raw["output"], (*path, "output"), OUTPUTS, "output")
        env: dict[str, str] = {}
        if raw.get("env"):  # null or empty: no variables
            with self.collect():
                given = self.mapping(raw["env"], (*path, "env"), hint="e.g. `env: {LANG: C}`")
                env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}
                self.templates_in(env, (*path, "env"), state, foreach=foreach_node)
        cwd = None
        if raw.get("cwd") is not None:
            with self.collect():
                cwd = self.text(raw["cwd"], (*path, "cwd"))
                self.template(cwd, (*path, "cwd"), state, foreach=foreach_node)
        timeout = config.timeout
        if "timeout" in raw:
            with self.collect():
                timeout = (
                    None
                    if raw["timeout"] is None
                    else self.duration(raw["timeout"], (*path, "timeout"), positive=True)
                )
        retry = config.retry
        if "retry" in raw:
            with self.collect():
                retry = self.retry(raw["retry"], (*path, "retry"), config.retry)
        desc = raw.get("description")
        return Node(
            name=name,
            kind=kind.name,
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
        seen = _reach(start, nodes)
        for n in nodes:
            if n not in seen and n != END:  # END cannot be routed to (reported above)
                self.report(
                    ("nodes", n),
                    f"node {n!r} is unreachable from start ({', '.join(start)})",
                    key=True,
                    hint="route to it from another node, list it in `start`, or remove it",
                )

    def joins(self, start: tuple[str, ...], nodes: dict[str, Node]) -> None:
        """A join runs once every node it needs has completed: each must be able to run first.

        A needed node can run before the join only if some path from ``start`` reaches
        it without passing through the join; every edge counts as possibly taken.
        """
        reached = _reach(start, nodes)
        for name, node in nodes.items():
            if not node.needs or name not in reached:
                continue  # not a join, or unreachable itself (reported above)
            before = _reach(start, nodes, avoid=name)
            for i, n in enumerate(node.needs):
                if n in before or n == name:
                    continue
                why = (
                    "which never runs (it is unreachable from start)"
                    if n not in reached
                    else f"which runs only after {name!r} itself"
                )
                where: Path = ("nodes", name, "needs")
                self.report(
                    (*where, i),
                    f"join {name!r} can never run: it waits for {n!r}, {why}",
                    label=where,
                    hint=f"route to {n!r} on a path that does not go through {name!r},"
                    f" or remove it from `needs`",
                )


def _kinds(key: str) -> str:
    """The kinds that take ``key``, in words: ``run and shell``."""
    takers = taken_by(key)
    return " and ".join(takers) if len(takers) < 3 else f"{', '.join(takers[:-1])} and {takers[-1]}"


def _reach(start: tuple[str, ...], nodes: dict[str, Node], avoid: str | None = None) -> set[str]:
    """The nodes some path from ``start`` reaches (a path through ``avoid`` stops there)."""
    seen = {s for s in start if s != avoid}
    todo = list(seen)
    while todo:
        for t in nodes[todo.pop()].targets():
            if t != END and t != avoid and t not in seen:
                seen.add(t)
                todo.append(t)
    return seen
