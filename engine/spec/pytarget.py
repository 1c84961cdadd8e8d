"""Whether a ``python: module:function`` target can be called, found without running code.

The module is looked for as the node will import it (:mod:`..nodes.python`): in the
workflow's folder first, a dotted name as folders. A module found there as source
(``name.py`` or ``name/__init__.py``) is parsed with :mod:`ast`, and its top level
must bind the function: a ``def`` (an ``async def`` cannot be called as
``fn(state, ctx)``), or an assignment, import or class, accepted as maybe callable.
A module not in the folder must be installed: ``importlib.util.find_spec`` of its
top-level name, which finds it without running it; what an installed package holds
(``json:loads``, ``os.path:join``) is left to the run, since knowing it would mean
importing the package. Nothing is imported, so nothing is executed.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .checks import did_you_mean

_COMPILED = (*importlib.machinery.EXTENSION_SUFFIXES, *importlib.machinery.BYTECODE_SUFFIXES)
_ANY = "*"  # a star import or a module __getattr__: any name may exist


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class _Module:
    source: Path | None  # the .py file; None: a folder without __init__.py, or compiled
    compiled: bool = False


class Targets:
    """The python targets of one workflow folder: each target, and each module, read once."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self._problems: dict[str, Problem | None] = {}
        self._modules: dict[Path, dict[str, str] | Problem] = {}

    def problem(self, target: str) -> Problem | None:
        """What stops ``target`` being called, or None if it may be called."""
        if target not in self._problems:
            self._problems[target] = _problem(target, self.base_dir, self._modules)
        return self._problems[target]


def _problem(
    target: str, base_dir: Path, modules: dict[Path, dict[str, str] | Problem]
) -> Problem | None:
    module_name, _, fn = target.partition(":")
    parts = module_name.split(".")
    found = _find(parts[0], base_dir)
    if found is None or (found.source is None and not found.compiled):
        try:  # installed (or built in): the import system finds a top-level name unexecuted
            installed = importlib.util.find_spec(parts[0]) is not None
        except (ImportError, ValueError):
            installed = False
        if installed:
            return None
        if found is None:
            return Problem(
                f"no module {parts[0]!r} next to the workflow file or among the installed packages",
                did_you_mean(parts[0], _local_modules(base_dir))
                or f"put {parts[0]}.py in {base_dir}",
            )
    module = found
    for depth, part in enumerate(parts[1:], start=1):
        folder = base_dir.joinpath(*parts[:depth])
        is_package = module.source is None or module.source.name == "__init__.py"
        if module.compiled or not is_package:
            return Problem(
                f"no module {'.'.join(parts[: depth + 1])!r}:"
                f" {'.'.join(parts[:depth])} is a module, not a folder of modules",
                f"name the module that defines {fn}, e.g. {parts[depth - 1]}:{fn}",
            )
        sub = _find(part, folder)
        if sub is None:
            return Problem(
                f"no module {'.'.join(parts[: depth + 1])!r} in the workflow's folder",
                did_you_mean(part, _local_modules(folder)) or f"put {part}.py in {folder}",
            )
        module = sub
    if module.compiled:
        return None
    if module.source is None:
        return Problem(
            f"{module_name!r} is a folder without __init__.py: it defines no functions",
            f"put `def {fn}(state, ctx):` in a module inside it and name that module",
        )
    if module.source not in modules:
        modules[module.source] = _read(module.source, module_name)
    names = modules[module.source]
    return names if isinstance(names, Problem) else _check_function(names, module, module_name, fn)


def _find(name: str, folder: Path) -> _Module | None:
    """Module ``name`` in ``folder``, as the import system would find it there."""
    package = folder / name
    if (package / "__init__.py").is_file():
        return _Module(package / "__init__.py")
    if (folder / f"{name}.py").is_file():
        return _Module(folder / f"{name}.py")
    if any((folder / f"{name}{suffix}").is_file() for suffix in _COMPILED) or any(
        (package / f"__init__{suffix}").is_file() for suffix in _COMPILED
    ):
        return _Module(None, compiled=True)
    if package.is_dir():
        return _Module(None)  # a namespace package (unless an installed module wins)
    return None


def _local_modules(folder: Path) -> list[str]:
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return [e.stem for e in entries if e.suffix == ".py"] + [
        e.name for e in entries if (e / "__init__.py").is_file()
    ]


def _read(source: Path, module_name: str) -> dict[str, str] | Problem:
    """The names a module file binds at its top level (see :func:`_bindings`)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except SyntaxError as exc:
        return Problem(
            f"{module_name!r} cannot be imported: {exc.msg} at {source.name}:{exc.lineno}",
            f"fix {source}",
        )
    except (OSError, ValueError) as exc:
        return Problem(f"{module_name!r} cannot be read: {exc}")
    return _bindings(tree.body)


def _check_function(
    names: dict[str, str], module: _Module, module_name: str, fn: str
) -> Problem | None:
    kind = names.get(fn)
    if _ANY in names or kind in ("def", "value"):
        return None
    if kind == "async":
        return Problem(
            f"{module_name}.{fn} is an async def: a python node calls fn(state, ctx)"
            " and needs a plain def",
            f"write `def {fn}(state, ctx):` (call asyncio.run inside it if you need to)",
        )
    file = module.source.name if module.source else module_name
    return Problem(
        f"{module_name!r} has no function {fn!r}",
        did_you_mean(fn, names) or f"add `def {fn}(state, ctx):` to {file}",
    )


def _bindings(body: list[ast.stmt]) -> dict[str, str]:
    """The names a module's top level binds, each as def, async or value (last one wins)."""
    out: dict[str, str] = {}
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef):
            out[stmt.name] = "def"
            if stmt.name == "__getattr__":  # names made on demand
                out[_ANY] = _ANY
        elif isinstance(stmt, ast.AsyncFunctionDef):
            out[stmt.name] = "async"
        elif isinstance(stmt, ast.ClassDef):
            out[stmt.name] = "value"
        elif isinstance(stmt, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if isinstance(stmt, ast.AnnAssign) and stmt.value is None:
                continue  # `x: int` binds nothing
            for t in targets:
                for node in ast.walk(t):
                    if isinstance(node, ast.Name):
                        out[node.id] = "value"
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            for alias in stmt.names:
                if alias.name == "*":
                    out[_ANY] = _ANY
                else:
                    out[alias.asname or alias.name.partition(".")[0]] = "value"
        else:  # if / try / with / for / while / match: their blocks run at the top level too
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for block in getattr(stmt, field, None) or []:
                    if isinstance(block, ast.stmt):
                        out.update(_bindings([block]))
                    else:  # an except handler or a match case
                        out.update(_bindings(list(getattr(block, "body", []))))
    return out
