"""Secrets never leak: provider keys and a workflow's ``secrets:`` are masked everywhere.

The end-to-end tests run the installed ``flowrun`` against a loopback LLM server
that echoes the key in its error bodies (cut at 300 characters, URL-encoded,
base64 at each alignment, upper-cased) and commands that print their environment,
then scan every byte flowrun left behind: the SQLite files (with -wal and -shm),
the events file, stderr, ``--json`` stdout and ``show``. Not the secret, nor any
of its encoded forms, nor any 8 characters of either may appear.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from flowrun.engine.errors import WorkflowError
from flowrun.engine.secrets import MASK, Masker, run_masker, variants
from flowrun.engine.spec.validate import load_workflow

from tests.engine.llm.test_llm import clean_env, flowrun
from tests.support.llm_servers import OpenAIServer, Reply

Write = Callable[[str, str], Path]

# "/" and "+" so the URL-encoded and base64 forms differ from the key itself
KEY = "sk-proj-Q7vX2/mLp9+RtZ4wK8nB3cJ6hYzWq"
# a user's own secret, with what JSON and the shell must escape
TOKEN = 'dpl_Vq8"Lr3\\Ns-Hx5Tk&Wm=Jd2'


def encodings(secret: str) -> Iterator[str]:
    """The forms a secret can be echoed in; base64 as the runs its bytes alone decide."""
    yield from (secret, secret.upper(), secret.lower(), quote(secret, safe=""))
    yield json.dumps(secret)[1:-1]
    yield json.dumps(json.dumps(secret)[1:-1])[1:-1]  # escaped again, as stored in JSON
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + secret.encode()).decode()
        yield enc[-(-8 * k // 6) : 8 * (k + len(secret)) // 6]


def windows(secret: str) -> set[bytes]:
    """Every 8 characters of every encoding of ``secret``."""
    return {form[i : i + 8].encode() for form in encodings(secret) for i in range(len(form) - 7)}


def assert_nowhere(secret: str, blobs: dict[str, bytes]) -> None:
    leaks = [
        (name, w.decode(), blob[max(0, blob.find(w) - 40) : blob.find(w) + 48])
        for w in sorted(windows(secret))
        for name, blob in blobs.items()
        if w in blob
    ]
    assert not leaks, f"{len(leaks)} leaks, first: {leaks[0]}"


def left_behind(tmp_path: Path, outputs: list[str]) -> dict[str, bytes]:
    """Every file flowrun wrote (database, -wal, -shm, events) and every output it printed."""
    blobs = {
        f.name: f.read_bytes()
        for f in tmp_path.iterdir()
        if f.is_file() and f.suffix not in (".yaml", ".py")
    }
    assert any(name.endswith(".db") for name in blobs), blobs.keys()
    blobs.update({f"output {i}": s.encode() for i, s in enumerate(outputs)})
    return blobs


def inspect(db: Path, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """What ``flowrun show`` prints of the latest run, as text and as JSON with events."""
    out = []
    for args in (("show", "latest"), ("show", "latest", "--json", "--events")):
        p = flowrun(*args, "--db", str(db), cwd=tmp_path, env=env)
        assert p.returncode == 1 and "failed" in p.stdout + p.stderr, p.stderr  # as the run
        out += [p.stdout, p.stderr]
    return out


# the masker ---------------------------------------------------------------------
def test_masker_masks_a_secret_in_every_encoding_it_may_be_echoed_in() -> None:
    m = Masker([KEY, TOKEN])
    for secret in (KEY, TOKEN):
        for form in encodings(secret):
            for around in ("", "x", "xy"):  # base64 runs sit at any offset in the text
                text = f"before {around}{form}{around} after"
                masked = m.text(text)
                assert MASK in masked, (secret, form)
                assert not any(w.decode() in masked for w in windows(secret)), masked
    assert m.text(f"hex {KEY.encode().hex().upper()}") == f"hex {MASK}"
    assert m.text(f"repr {KEY!r}") == f"repr '{MASK}'"


def test_masker_masks_the_whole_secret_inside_a_longer_base64_stream() -> None:
    m = Masker([KEY])
    for k in range(3):
        for tail in range(3):
            stream = base64.b64encode(b"p" * k + KEY.encode() + b"s" * tail).decode()
            masked = m.text(stream)
            assert MASK in masked and len(masked) < 12, (k, tail, masked)


def test_masker_ignores_values_too_short_to_mask_and_leaves_other_text_alone() -> None:
    m = Masker(["yes", "  1 ", ""])
    assert not m and m.text("yes 1") == "yes 1"
    assert Masker([KEY]).text("nothing secret here") == "nothing secret here"
    assert all(len(v) >= 4 for v in variants("abcd"))


def test_masker_masks_strings_and_keys_inside_json_values() -> None:
    m = Masker([TOKEN])
    value = {"a": [TOKEN, {TOKEN: 1, "n": 2.5}], "b": None, "c": True}
    assert m.value(value) == {"a": [MASK, {MASK: 1, "n": 2.5}], "b": None, "c": True}


def test_including_a_known_secret_reuses_the_compiled_masker() -> None:
    m = Masker([KEY])
    assert m.including([KEY]) is m
    assert m.including([TOKEN]).text(f"{KEY} {TOKEN}") == f"{MASK} {MASK}"


def test_a_run_masks_provider_keys_its_api_key_envs_and_its_secrets(write: Write) -> None:
    wf = load_workflow(
        write(
            "wf.yaml",
            """
            name: m
            secrets: [DEPLOY_TOKEN]
            state: {reply: {}}
            nodes:
              ask: {llm: {model: gpt-4o-mini, prompt: hi, api_key_env: MY_KEY}, save: reply}
            """,
        )
    )
    env = {
        "OPENAI_API_KEY": "sk-openai-value-1",
        "ANTHROPIC_API_KEY": "sk-ant-value-22",
        "MY_KEY": "my-own-key-333",
        "DEPLOY_TOKEN": TOKEN,
        "HOME": "/home/someone",
    }
    m = run_masker(wf, env)
    for name, value in env.items():
        assert (m.text(value) == MASK) == (name != "HOME"), name


# the workflow key ---------------------------------------------------------------
def test_secrets_lists_environment_variable_names(write: Write) -> None:
    wf = load_workflow(
        write(
            "wf.yaml",
            """
            name: s
            secrets: [DEPLOY_TOKEN, _db_password2, DEPLOY_TOKEN]
            nodes:
              a: {shell: "true"}
            """,
        )
    )
    assert wf.secrets == ("DEPLOY_TOKEN", "_db_password2")


@pytest.mark.parametrize(
    ("value", "where", "says"),
    [
        ("DEPLOY_TOKEN", "wf.yaml:2:10", "expected a list of variable names, not a string"),
        ("[DEPLOY_TOKEN, 42]", "wf.yaml:2:25", "expected a variable name, not a number"),
        ("[ok, 'sk-live-1234567']", "wf.yaml:2:15", "not an environment variable name: 'sk-l…'"),
        ("[2FA]", "wf.yaml:2:11", "not an environment variable name: '2FA'"),
    ],
)
def test_a_bad_secrets_entry_is_an_error_at_its_position(
    write: Write, value: str, where: str, says: str
) -> None:
    path = write("wf.yaml", f"name: s\nsecrets: {value}\nnodes:\n  a: {{shell: 'true'}}\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    message = str(info.value)
    assert where in message and "secrets" in message and says in message, message
    assert "sk-live-1234567" not in message


# F05: an API key echoed in a server's error body --------------------------------
def echoes(key: str) -> list[Reply]:
    """Error replies that echo ``key`` where a cut or a missing decoder would leak it."""
    replies = [Reply(400, message="x" * at + key + " was rejected") for at in (270, 285, 292, 296)]
    replies += [
        Reply(400, message="y" * 290 + quote(key, safe="")),  # URL-encoded across the cut
        Reply(422, message="z" * 290 + key.upper()),
        *(
            Reply(403, message="w" * 280 + base64.b64encode(p + key.encode()).decode())
            for p in (b"", b"a", b"ab")
        ),
        Reply(400, raw="<html>" + "v" * 190 + key + "</html>"),  # not JSON: cut at 200
    ]
    # a 5xx is retried within the attempt (Retry-After: 0 keeps it quick); the last counts
    replies += [
        Reply(503, message="u" * (296 - n) + key, headers={"retry-after": "0"}) for n in range(4)
    ]
    return replies


def test_an_api_key_echoed_in_error_bodies_is_masked_before_it_is_cut(
    write: Write, tmp_path: Path
) -> None:
    script = echoes(KEY)
    tasks = len(script) - 3  # one task per 4xx echo; the four 503s fail the last one
    wf = write(
        "wf.yaml",
        f"""
        name: echo
        config: {{max_concurrency: 1}}  # the tasks take the script in order
        state: {{out: {{default: [], reducer: append}}}}
        nodes:
          ask:
            foreach: {list(range(tasks))}
            llm: {{model: gpt-4o-mini, prompt: "hi there {{{{ item }}}}"}}
            save: out
        """,
    )
    db = tmp_path / "f.db"
    with OpenAIServer(api_key=KEY, script=script) as o:
        env = clean_env(OPENAI_BASE_URL=o.url, OPENAI_API_KEY=KEY)
        p = flowrun(
            "run",
            str(wf),
            "--db",
            str(db),
            "--json",
            "--events",
            str(tmp_path / "events.jsonl"),
            cwd=tmp_path,
            env=env,
        )
        assert [s.status for s in o.served] == [r.status for r in script]  # all echoed
    assert p.returncode == 1, p.stderr
    assert f"(and {tasks - 1} more)" in p.stderr and "HTTP 400" in p.stderr
    assert MASK in p.stderr and MASK in json.loads(p.stdout)["error"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    errors = [e["error"] for e in events if e["type"] == "task_failed"]
    assert len(errors) == tasks and all(MASK in e for e in errors), errors
    assert any("HTTP 503" in e for e in errors) and any("HTTP 400: <html>" in e for e in errors)
    outputs = [p.stdout, p.stderr, *inspect(db, tmp_path, clean_env())]
    assert_nowhere(KEY, left_behind(tmp_path, outputs))


# F06: commands inherit the keys; their output is masked --------------------------
LEAKY = r"""
name: leaky
secrets: [DEPLOY_TOKEN]
state:
  out: {default: null}
  note: {default: null}
nodes:
  echo:
    run: [sh, -c, 'printf "%s\n" "$DEPLOY_TOKEN"']
    save: out
    next: leak
  leak:
    retry: {max_attempts: 2, backoff: 1ms, jitter: false}
    run:
      - sh
      - -c
      - |
        env; env >&2
        for s in "$OPENAI_API_KEY" "$DEPLOY_TOKEN"; do
          printf %s "$s" | base64; printf x%s "$s" | base64; printf xy%s "$s" | base64
          printf %s "$s" | tr a-z A-Z
        done
        printf %s "$OPENAI_API_KEY"; head -c 3990 /dev/zero | tr '\0' p   # across the tail's cut
        printf %s "$OPENAI_API_KEY" >&2; head -c 3990 /dev/zero | tr '\0' q >&2
        printf '\n%0290d%s\n' 0 "$OPENAI_API_KEY" >&2   # the error quotes 300 characters
        exit 1
"""


def test_a_failing_command_that_prints_its_environment_stores_no_secret(
    write: Write, tmp_path: Path
) -> None:
    wf = write("wf.yaml", LEAKY)
    db = tmp_path / "f.db"
    env = clean_env(OPENAI_API_KEY=KEY, DEPLOY_TOKEN=TOKEN)
    p = flowrun(
        "run",
        str(wf),
        "--db",
        str(db),
        "--json",
        "--events",
        str(tmp_path / "events.jsonl"),
        "--set",
        f"note=deploy with {TOKEN}",
        cwd=tmp_path,
        env=env,
    )
    assert p.returncode == 1, p.stderr
    result = json.loads(p.stdout)
    assert result["state"]["out"] == MASK  # a secret never reaches the state either
    assert result["state"]["note"] == f"deploy with {MASK}"
    assert "failed after 2 attempt(s): command failed (exit code 1)" in result["error"]
    shown = inspect(db, tmp_path, clean_env())
    assert json.loads(shown[2])["nodes"]["leak"]["errors"][-1]["stderr"].endswith(f"0{MASK}\n")
    assert_nowhere(KEY, left_behind(tmp_path, [p.stdout, p.stderr, *shown]))
    assert_nowhere(TOKEN, left_behind(tmp_path, [p.stdout, p.stderr, *shown]))


def test_a_command_still_inherits_the_provider_keys(write: Write, tmp_path: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: inherit
        state: {same: {default: null}}
        nodes:
          check:
            shell: '[ "$OPENAI_API_KEY" = "$EXPECTED" ] && echo yes || echo no'
            save: same
        """,
    )
    env = clean_env(OPENAI_API_KEY=KEY, EXPECTED=KEY)
    p = flowrun("run", str(wf), "--db", str(tmp_path / "f.db"), "--json", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"]["same"] == "yes"
