"""The ``FLOWRUN_*`` settings given in seconds, read by one rule.

Each is a plain finite number of seconds (``0.5``, ``30``, ``1e3``) from 0 (or
above 0, where 0 makes no sense) up to :data:`MAX_SECONDS`, one week: longer
waits are mistakes, and SQLite's ``busy_timeout`` counts milliseconds in 32 bits.
``inf``, ``nan``, negative numbers and words are a :class:`UsageError` (exit 2).

=========================  =======  ==========================================
variable                   default  meaning
=========================  =======  ==========================================
``FLOWRUN_BUSY_TIMEOUT``   30       a write waits this long for another
                                    process's write lock (0 allowed)
``FLOWRUN_LEASE_STALE_S``  30       a heartbeat older than this is stale (> 0)
``FLOWRUN_GRACE``          10       running tasks may finish this long after
                                    SIGINT/SIGTERM (0 allowed)
=========================  =======  ==========================================

:func:`check` reads them all, so a run refuses a bad value before it starts
rather than in a thread that has no one to tell.
"""

from __future__ import annotations

import math
import os

from .errors import UsageError

MAX_SECONDS = 7 * 24 * 3600.0  # one week
BUSY_TIMEOUT_S = 30.0
LEASE_STALE_S = 30.0
GRACE_S = 10.0


def env_seconds(name: str, default: float, *, allow_zero: bool = True) -> float:
    """The seconds ``name`` holds (``default`` if unset); a :class:`UsageError` if not valid."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value >= 0 if allow_zero else value > 0) or not value <= MAX_SECONDS:
        span = "from 0" if allow_zero else "above 0"
        raise UsageError(  # NaN and ±inf fail the comparisons too
            f"{name}={raw!r} is not a number of seconds {span} up to {MAX_SECONDS:.0f} (one week)",
            hint=f"e.g. {name}={default:g}, or unset it for the default ({default:g}s)",
        )
    return value


def busy_timeout_s() -> float:
    """How long a write waits for another process's write lock before it fails."""
    return env_seconds("FLOWRUN_BUSY_TIMEOUT", BUSY_TIMEOUT_S)


def lease_stale_s() -> float:
    """Seconds without a heartbeat after which a lease that cannot be checked is abandoned."""
    return env_seconds("FLOWRUN_LEASE_STALE_S", LEASE_STALE_S, allow_zero=False)


def grace_s() -> float:
    """How long running tasks may finish after SIGINT/SIGTERM before they are killed."""
    return env_seconds("FLOWRUN_GRACE", GRACE_S)


def check() -> None:
    """Read every setting: a bad one is a :class:`UsageError` now, not later in a thread."""
    busy_timeout_s()
    lease_stale_s()
    grace_s()
