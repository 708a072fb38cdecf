# SPDX-License-Identifier: Apache-2.0
"""A command's stages as they run: a spinner (or a line in a log), then ✓ or ✗ with the time it took."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from rich.console import Console

from ..console import escape


@dataclass
class Outcome:
    """What a stage found: set `problems` inside the stage and it ends with ✗ and the count, not ✓; set
    `skipped` to the reason it did nothing and it ends with a warning saying so, not ✓."""

    problems: int = 0
    skipped: Optional[str] = None


@dataclass
class Stages:
    """Prints each stage as it runs and keeps its duration for the manifest. On a terminal the running
    stage is a spinner; elsewhere (a CI log) its name is printed when it starts, and again when it ends."""

    console: Console
    durations: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[Outcome]:
        start = time.perf_counter()
        outcome = Outcome()
        if not self.console.is_terminal:
            self.console.print(f"{name} ...", markup=False)
        with self.console.status(f"{escape(name)} ..."):
            try:
                yield outcome
            except BaseException:
                self.console.print(f"[red]✗[/red] {escape(name)}  ({time.perf_counter() - start:.1f}s)")
                raise
        self.durations[name] = round(time.perf_counter() - start, 3)
        if outcome.problems:
            found = f"{outcome.problems} problem{'s' if outcome.problems > 1 else ''}"
            self.console.print(f"[red]✗[/red] {escape(name)}  ({self.durations[name]:.1f}s, {found})")
        elif outcome.skipped:
            self.console.print(f"[yellow]warning[/yellow] {escape(name)} skipped: {escape(outcome.skipped)}")
        else:
            self.console.print(f"[green]✓[/green] {escape(name)}  ({self.durations[name]:.1f}s)")

    def record(self, name: str, seconds: float) -> None:
        """A stage that ran elsewhere (another process) and took `seconds` there: printed and kept like one run here."""
        self.durations[name] = round(seconds, 3)
        self.console.print(f"[green]✓[/green] {escape(name)}  ({seconds:.1f}s)")
