"""Template values in ``shell:`` commands are data, never code.

A shell template is rendered with every ``{{ ... }}`` output replaced by a
placeholder. :func:`substitute` then assigns each value to a shell variable
(``_flowrun_0='...'``, quoted with :func:`shlex.quote`) in front of the script and
puts a reference to the variable where the value was, written for the quoting
context it sits in::

    echo {{ v }}              →  echo "${_flowrun_0}"
    echo "a {{ v }}"          →  echo "a ${_flowrun_0}"
    echo 'a {{ v }}'          →  echo 'a '"${_flowrun_0}"''
    cat <<EOF ... {{ v }}     →  ... ${_flowrun_0}

The shell never re-parses what a variable expands to, so a value such as
``$(rm -rf ~)`` stays text whatever the context; reading the context only decides
whether the value stays one word. Two places cannot take a variable safely and
are refused: arithmetic ``$(( ))`` (only integers are inlined) and a quoted
here-document (``<<'EOF'``), which expands nothing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

PLACEHOLDER = re.compile("\x00(\\d+)\x00")
_INT = re.compile(r"^-?\d+$")
_WORD_START = " \t\n;&|()<>"
_DELIM_END = " \t\n;&|<>()"

# A value's text, and for a list the text of each item: a list spreads into one word
# per item where the shell takes words, and is its JSON text inside quotes.
Value = tuple[str, list[str] | None]


class ShellTemplateError(ValueError):
    """A value sits where the shell cannot take it as data."""


@dataclass(slots=True)
class _Frame:
    kind: str  # U SUB S D BT PARAM ARITH ANSI COMMENT
    depth: int = 0


@dataclass(slots=True)
class _Heredoc:
    delim: str
    strip_tabs: bool
    quoted: bool


def _var(n: int) -> str:
    return f"_flowrun_{n}"


class _Substituter:
    def __init__(self, script: str, values: list[Value]) -> None:
        self.s = script
        self.values = values
        self.out: list[str] = []
        self.assigns: dict[str, str] = {}

    # a value, written for its context ------------------------------------
    def _assign(self, name: str, text: str) -> str:
        self.assigns[name] = text
        return name

    def _ref(self, n: int, context: str) -> str:
        text, words = self.values[n]
        if context == "arith":
            if not _INT.match(text.strip()):
                raise ShellTemplateError(f"only an integer can go into $(( )), got {text[:40]!r}")
            return text.strip()
        if context == "qheredoc":
            raise ShellTemplateError(
                "a value inside a quoted here-document (<<'EOF') is never expanded;"
                " use an unquoted delimiter (<<EOF)"
            )
        if context == "comment":
            return ""
        if context == "word" and words is not None:
            names = [self._assign(f"{_var(n)}_{i}", w) for i, w in enumerate(words)]
            return " ".join(f'"${{{name}}}"' for name in names)
        name = self._assign(_var(n), text)
        return {
            "word": f'"${{{name}}}"',
            "dq": f"${{{name}}}",
            "sq": f"'\"${{{name}}}\"'",
            "ansi": f"'\"${{{name}}}\"$'",
            "heredoc": f"${{{name}}}",
        }[context]

    def _context(self, stack: list[_Frame]) -> str:
        for i in range(len(stack) - 1, -1, -1):
            kind = stack[i].kind
            if kind == "PARAM":
                continue
            if kind == "BT":
                below = [f.kind for f in stack[:i] if f.kind != "PARAM"]
                return "dq" if below and below[-1] == "D" else "word"
            return {
                "U": "word",
                "SUB": "word",
                "S": "sq",
                "D": "dq",
                "ANSI": "ansi",
                "ARITH": "arith",
                "COMMENT": "comment",
            }[kind]
        return "word"  # pragma: no cover - the stack always holds U

    def _placeholder(self, i: int, context: str) -> int | None:
        m = PLACEHOLDER.match(self.s, i)
        if m is None:
            return None
        self.out.append(self._ref(int(m.group(1)), context))
        return m.end()

    # the lexer -----------------------------------------------------------
    def run(self) -> str:
        s = self.s
        stack = [_Frame("U")]
        pending: list[_Heredoc] = []
        i = 0
        n = len(s)
        while i < n:
            c = s[i]
            top = stack[-1]
            if c == "\x00":
                end = self._placeholder(i, self._context(stack))
                if end is not None:
                    i = end
                    continue
            code = top.kind in ("U", "SUB", "PARAM", "BT", "ARITH")
            if top.kind == "COMMENT":
                if c == "\n":
                    stack.pop()
                    continue
            elif top.kind == "S":
                if c == "'":
                    stack.pop()
            elif top.kind == "ANSI":
                if c == "\\" and i + 1 < n:
                    self.out.append(s[i : i + 2])
                    i += 2
                    continue
                if c == "'":
                    stack.pop()
            elif c == "\\" and i + 1 < n and s[i + 1] != "\x00":
                self.out.append(s[i : i + 2])
                i += 2
                continue
            elif top.kind == "D" and c == '"':
                stack.pop()
            elif c == "$" and s.startswith("$((", i):
                stack.append(_Frame("ARITH"))
                self.out.append("$((")
                i += 3
                continue
            elif c == "$" and s.startswith("$(", i):
                stack.append(_Frame("SUB"))
                self.out.append("$(")
                i += 2
                continue
            elif c == "$" and s.startswith("${", i):
                stack.append(_Frame("PARAM"))
                self.out.append("${")
                i += 2
                continue
            elif c == "$" and s.startswith("$'", i) and code:
                stack.append(_Frame("ANSI"))
                self.out.append("$'")
                i += 2
                continue
            elif c == "`":
                if top.kind == "BT":
                    stack.pop()
                else:
                    stack.append(_Frame("BT"))
            elif top.kind == "D":
                pass
            elif c == "'" and top.kind != "ARITH":
                stack.append(_Frame("S"))
            elif c == '"' and top.kind != "ARITH":
                stack.append(_Frame("D"))
            elif top.kind == "PARAM" and c == "}":
                stack.pop()
            elif top.kind in ("SUB", "ARITH") and c == "(":
                top.depth += 1
            elif top.kind == "SUB" and c == ")":
                if top.depth == 0:
                    stack.pop()
                else:
                    top.depth -= 1
            elif top.kind == "ARITH" and c == ")":
                if top.depth == 0 and s.startswith("))", i):
                    stack.pop()
                    self.out.append("))")
                    i += 2
                    continue
                top.depth = max(0, top.depth - 1)
            elif (
                c == "#" and top.kind in ("U", "SUB", "BT") and (i == 0 or s[i - 1] in _WORD_START)
            ):
                stack.append(_Frame("COMMENT"))
            elif c == "<" and top.kind in ("U", "SUB") and s.startswith("<<", i):
                if not s.startswith("<<<", i):
                    i = self._heredoc_operator(i, pending)
                    continue
                self.out.append("<<<")
                i += 3
                continue
            elif c == "\n" and pending and top.kind in ("U", "SUB"):
                self.out.append(c)
                i = self._heredoc_bodies(i + 1, pending)
                pending = []
                continue
            self.out.append(c)
            i += 1
        script = "".join(self.out)
        if not self.assigns:
            return script
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.assigns.items())
        return f"{prefix}; {script}"

    def _heredoc_operator(self, i: int, pending: list[_Heredoc]) -> int:
        s = self.s
        j = i + 2
        strip_tabs = s.startswith("-", j)
        if strip_tabs:
            j += 1
        while j < len(s) and s[j] in " \t":
            j += 1
        start = j
        while j < len(s) and s[j] not in _DELIM_END:
            j += 1
        word = s[start:j]
        if PLACEHOLDER.search(word):
            raise ShellTemplateError("a template value cannot be a here-document delimiter")
        quoted = any(ch in word for ch in "'\"\\")
        delim = word.replace("'", "").replace('"', "").replace("\\", "")
        if delim:
            pending.append(_Heredoc(delim, strip_tabs, quoted))
        self.out.append(s[i:j])
        return j

    def _heredoc_bodies(self, i: int, pending: list[_Heredoc]) -> int:
        s = self.s
        for doc in pending:
            while i < len(s):
                end = s.find("\n", i)
                end = len(s) if end < 0 else end + 1
                line = s[i:end]
                bare = line.rstrip("\n")
                if (bare.lstrip("\t") if doc.strip_tabs else bare) == doc.delim:
                    self.out.append(line)
                    i = end
                    break
                context = "qheredoc" if doc.quoted else "heredoc"
                last = 0
                for m in PLACEHOLDER.finditer(line):
                    self.out.append(line[last : m.start()])
                    self.out.append(self._ref(int(m.group(1)), context))
                    last = m.end()
                self.out.append(line[last:])
                i = end
        return i


def substitute(script: str, values: list[Value]) -> str:
    """Replace the placeholders ``\\0N\\0`` in ``script`` with references to ``values[N]``.

    Raises :class:`ShellTemplateError` where a value cannot be passed as data.
    """
    for text, words in values:
        if "\x00" in text or any("\x00" in w for w in words or ()):
            raise ShellTemplateError("a value holds a NUL byte, which no command can receive")
    return _Substituter(script, values).run()


def check(source: str) -> None:
    """Statically check a shell template: ``{{ }}`` outputs in places that refuse values.

    Control blocks are dropped and every output stands for an integer, so this
    only finds what is wrong whatever the values (a quoted here-document, a
    here-document delimiter).
    """
    text = re.sub(r"\{#.*?#\}|\{%.*?%\}", "", source, flags=re.DOTALL)
    count = 0

    def mark(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"\x00{count - 1}\x00"

    text = re.sub(r"\{\{.*?\}\}", mark, text, flags=re.DOTALL)
    substitute(text, [("0", None)] * count)
