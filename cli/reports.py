"""The reports a CI job reads after a run: ``--junit FILE`` and GitHub's job summary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flowrun.engine import Store, UsageError, Workflow

from . import console


@dataclass(frozen=True, slots=True)
class CIReports:
    """Where to write; absolute, as the engine works in the workflow's folder during a run."""

    junit: Path | None = None
    summary: Path | None = None  # GITHUB_STEP_SUMMARY

    def write(self, store: Store, run_id: str, workflow: Workflow | None = None) -> None:
        """Write them for a run that ended; one that cannot be written is a warning."""
        if self.junit is not None:
            from flowrun.engine.junit import write_junit

            try:
                write_junit(store, run_id, self.junit, workflow)
            except OSError as exc:
                console.warn(f"--junit {self.junit}: not written: {exc.strerror or exc}")
        if self.summary is not None:
            from flowrun.engine.summary import append_summary

            try:
                append_summary(store, run_id, self.summary)
            except OSError as exc:
                console.warn(
                    f"GITHUB_STEP_SUMMARY={self.summary}: not written: {exc.strerror or exc}"
                )


def ci_reports(junit: str | None, *, summary: bool = True) -> CIReports:
    """Resolve ``--junit`` (a usage error if it can never be written) and the summary file."""
    target = None
    if junit:
        target = Path(junit).absolute()
        if target.is_dir():
            raise UsageError(f"--junit {junit}: is a folder, not a file")
        if not target.parent.is_dir():
            raise UsageError(f"--junit {junit}: no such directory", hint="create the folder first")
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if summary else None
    return CIReports(target, Path(step_summary).absolute() if step_summary else None)
