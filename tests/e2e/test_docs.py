"""The documentation is true of the program: its examples validate, its CLI page is complete.

Every fenced ``yaml`` block in README.md and docs/*.md is a whole workflow, unless
the line before it is a marker comment:

- ``<!-- fragment -->``: part of a workflow (say, just ``nodes:``). It is placed in
  a minimal workflow (a name, and every state key its templates read declared with
  a null default) and validated;
- ``<!-- pricing -->``: a price table, loaded with the price-table parser;
- ``<!-- github-actions -->``, ``<!-- gitlab-ci -->``: a CI job, whose flowrun
  commands ``tests/e2e/test_ci_docs.py`` checks against the CLI.

Each workflow is checked by ``load_workflow`` and against ``flowrun schema``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from flowrun.cli.app import app
from flowrun.engine import load_workflow
from flowrun.engine.costs import parse_prices
from flowrun.engine.spec import keys, templates
from flowrun.engine.spec.schema import workflow_schema

from tests.support.schema_check import errors

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:^<!-- (?P<mark>[a-z-]+) -->\n)?^```yaml\n(?P<body>.*?)^```", re.M | re.S)


def yaml_blocks() -> list[tuple[str, str | None, str]]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("body")) + 1
            out.append((f"{page.relative_to(ROOT)}:{line}", m["mark"], m["body"]))
    return out


BLOCKS = yaml_blocks()
CI_JOBS = ("github-actions", "gitlab-ci")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def wrap(fragment: dict[str, Any]) -> dict[str, Any]:
    """A minimal workflow around a fragment: a name, and the state it reads declared."""
    doc: dict[str, Any] = {"name": "fragment", **fragment}
    state = dict(doc.get("state") or {})
    read: set[str] = set()
    for node in (doc.get("nodes") or {}).values():
        for text in _strings(node):
            if templates.is_template(text):
                read |= templates.references(text)[1]
        for route in node.get("routes") or []:
            if isinstance(route.get("when"), str):
                read |= templates.references(route["when"], condition=True)[1]
        if node.get("save"):
            read.add(node["save"])
    for k in sorted(read - set(state)):
        state[k] = {"default": None, "reducer": "append"}
    doc["state"] = state
    return doc


def stub_modules(doc: dict[str, Any], folder: Path) -> None:
    """The modules an example's python nodes name: the docs show them, the user writes them."""
    for node in (doc.get("nodes") or {}).values():
        target = node.get("python") if isinstance(node, dict) else None
        if isinstance(target, str) and ":" in target:
            module, _, fn = target.partition(":")
            file = folder.joinpath(*module.split(".")).with_suffix(".py")
            file.parent.mkdir(parents=True, exist_ok=True)
            with file.open("a", encoding="utf-8") as out:
                out.write(f"def {fn}(state, ctx):\n    return None\n")


@pytest.mark.parametrize(("where", "mark", "body"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_every_yaml_example_in_the_docs_is_valid(
    where: str, mark: str | None, body: str, tmp_path: Path
) -> None:
    assert mark in (None, "fragment", "pricing", *CI_JOBS), f"{where}: unknown marker {mark!r}"
    if mark in CI_JOBS:
        assert isinstance(yaml.safe_load(body), dict), where  # its commands: test_ci_docs.py
        return
    if mark == "pricing":
        parse_prices(body, where)
        return
    doc = yaml.safe_load(body)
    if mark == "fragment":
        doc = wrap(doc)
        body = yaml.safe_dump(doc, sort_keys=False)
    path = tmp_path / "example.yaml"
    path.write_text(body, encoding="utf-8")
    stub_modules(doc, tmp_path)
    load_workflow(path)  # a WorkflowError names the file, line and key
    assert errors(workflow_schema(), doc) == [], where


def test_the_docs_have_yaml_examples_of_every_kind() -> None:
    marks = {mark for _, mark, _ in BLOCKS}
    assert marks == {None, "fragment", "pricing", *CI_JOBS}
    assert len([b for b in BLOCKS if b[0].startswith("docs/workflow.md")]) >= 10


def test_workflow_md_documents_every_key_of_the_format() -> None:
    page = (ROOT / "docs" / "workflow.md").read_text(encoding="utf-8")
    sections = (
        keys.TOP,
        keys.STATE,
        keys.CONFIG,
        keys.RETRY,
        keys.KIND_BODIES,
        keys.COMMON,
        keys.COMMAND,
        keys.ROUTE,
        keys.LLM,
    )
    for section in sections:
        for k in section:
            assert f"| `{k.name}` |" in page or f"### {k.name}" in page, k.name
    for reducer in keys.STATE[1].choices:
        assert f"`{reducer}`" in page
    for output in keys.COMMAND[0].choices:
        assert f"`{output}`" in page


def _sections(page: str) -> dict[str, str]:
    """The ``## …`` sections of docs/cli.md: ``## flowrun NAME …`` by command name."""
    parts = re.split(r"^## (.*)$", page, flags=re.M)
    out = {}
    for title, text in zip(parts[1::2], parts[2::2], strict=True):
        m = re.match(r"flowrun (\S+)", title)
        out[m[1] if m else title] = text
    return out


def test_cli_md_documents_every_command_and_option_and_nothing_else() -> None:
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = _sections(page)
    environment = documented.pop("Environment")
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert sorted(documented) == sorted(commands)
    for name, command in commands.items():
        text = documented[name]
        options: set[str] = set()
        for param in command.params:
            if param.param_type_name == "option":
                options.update(param.opts + param.secondary_opts)
                envvar = param.envvar
                if isinstance(envvar, str):
                    assert envvar in text + environment, f"{name}: {envvar} undocumented"
        for opt in options:
            assert re.search(rf"`{re.escape(opt)}[`\s=]", text), f"{name}: {opt} undocumented"
        mentioned = set(re.findall(r"`(-{1,2}[a-z][a-z-]*)", text))
        assert mentioned <= options, f"{name}: documents {mentioned - options}, not options"


def test_the_readme_links_every_docs_page_and_never_mentions_spec() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "SPEC" not in readme
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, page.name
    assert readme.index("make run") < readme.index("make test") < 400
