"""Secret values masked as ``***`` in every text a run stores or prints.

A run's :class:`Masker` is built once from the values of the environment
variables that hold secrets: the provider keys (``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, each llm node's literal ``api_key_env``) and the
workflow's own ``secrets:`` list; and from the store's own secrets (the password
of a ``postgresql://`` ``--db`` or ``FLOWRUN_DB``). It knows each value as it may appear in text
a server or a command sends back (as is, upper or lower case, URL-encoded, JSON-
or Python-escaped, hex, base64 at each of the three byte alignments) and masks
them all with one compiled pattern. Text is masked whole, before anything cuts
it, so a cut can never leave part of a secret behind.

Values shorter than :data:`MIN_LEN` characters are not masked: masking ``1`` or
``yes`` everywhere would garble every log and hide nothing worth hiding.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from .spec.model import Workflow
    from .store.base import Store

MASK = "***"
MIN_LEN = 4
PROVIDER_KEY_ENVS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def _base64_runs(raw: bytes) -> set[str]:
    """The base64 characters that ``raw`` alone decides, wherever it sits in a stream.

    Behind ``k`` bytes of other data (k = 0, 1, 2), the first and last characters
    of its encoding also carry bits of its neighbours: only the characters whose
    six bits all come from ``raw`` are kept.
    """
    runs: set[str] = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw).decode("ascii")
        start = -(-8 * k // 6)  # the first character wholly inside raw
        end = 8 * (k + len(raw)) // 6  # one past the last
        run = enc[start:end]
        runs.update((run, run.replace("+", "-").replace("/", "_")))  # and base64url
    return runs


def variants(secret: str) -> set[str]:
    """Every form of ``secret`` to mask (case is ignored when matching)."""
    forms: set[str] = set()
    for s in {secret, secret.strip()}:
        raw = s.encode("utf-8", "surrogateescape")
        once = quote(s, safe="")
        forms.update(
            (
                s,
                once,
                quote(s),  # "/" left as is
                quote_plus(s, safe=""),
                quote(once, safe=""),  # encoded twice
                json.dumps(s)[1:-1],
                json.dumps(s, ensure_ascii=False)[1:-1],
                json.dumps(s)[1:-1].replace("/", "\\/"),
                json.dumps(json.dumps(s)[1:-1])[1:-1],  # JSON in a JSON string
                repr(s)[1:-1],
                repr(raw)[2:-1],  # as httpx quotes a header value: b'...'
                raw.hex(),
            )
        )
        forms |= _base64_runs(raw)
    return {f for f in forms if len(f) >= MIN_LEN}


class Masker:
    """Masks a fixed set of secrets; an empty one returns every text unchanged."""

    __slots__ = ("_folded", "_pattern", "secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = frozenset(s for s in secrets if len(s.strip()) >= MIN_LEN)
        forms = set().union(*(variants(s) for s in self.secrets)) if self.secrets else set()
        # longest first: a form that contains another is masked whole
        alternatives = sorted(forms, key=lambda f: (-len(f), f))
        self._pattern: re.Pattern[str] | None = None
        self._folded: re.Pattern[str] | None = None
        if alternatives:
            self._pattern = re.compile("|".join(map(re.escape, alternatives)), re.IGNORECASE)
            # the same forms in lower case, matched against lower-cased text: ten times
            # faster than IGNORECASE, and right whenever lowering keeps the text's length
            folded = sorted({f.lower() for f in forms}, key=lambda f: (-len(f), f))
            self._folded = re.compile("|".join(map(re.escape, folded)))

    @classmethod
    def from_env(cls, names: Iterable[str], environ: Mapping[str, str] | None = None) -> Masker:
        """The masker of the values of the environment variables ``names`` (unset ones skipped)."""
        env = os.environ if environ is None else environ
        return cls(v for v in (env.get(n) for n in names) if v)

    def including(self, more: Iterable[str]) -> Masker:
        """This masker, plus ``more`` (itself when it already masks them all)."""
        extra = {s for s in more if len(s.strip()) >= MIN_LEN} - self.secrets
        return Masker(self.secrets | extra) if extra else self

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        if self._pattern is None or self._folded is None or not text:
            return text
        lowered = text.lower()
        if len(lowered) != len(text):  # e.g. "İ" lowers to two characters
            return self._pattern.sub(MASK, text)
        out: list[str] = []
        at = 0
        for m in self._folded.finditer(lowered):
            out += (text[at : m.start()], MASK)
            at = m.end()
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self.text(text)

    def value(self, value: Any) -> Any:
        """A JSON-able value with the strings in it (mapping keys too) masked."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def secret_env_names(workflow: Workflow) -> list[str]:
    """The environment variables whose values a run of ``workflow`` masks."""
    from .nodes.registry import kind_of

    names = list(PROVIDER_KEY_ENVS)
    for node in workflow.nodes.values():
        env = kind_of(node).key_env(node)
        if isinstance(env, str) and "{{" not in env:
            names.append(env)
    names.extend(workflow.secrets)
    return list(dict.fromkeys(names))


def run_masker(
    workflow: Workflow, environ: Mapping[str, str] | None = None, *, store: Store | None = None
) -> Masker:
    """The masker of one run of ``workflow``: provider keys, the workflow's ``secrets`` and
    the secrets of the ``store`` it is kept in (a ``FLOWRUN_DB`` URL's password, which
    every command the run starts inherits)."""
    masker = Masker.from_env(secret_env_names(workflow), environ)
    return masker if store is None else masker.including(store.secrets())
