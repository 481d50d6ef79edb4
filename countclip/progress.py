"""One progress line per long stage: how far, how fast, how long still to go.

    progress = Progress("[build]", total=20000, unit="rows", echo=print)
    progress.update(5000, "312 verified")   # [build] 5000/20000 rows (25%), 410 rows/s, ETA 37s, 312 verified
    progress.close()                        # [build] 20000/20000 rows (100%) in 49s, 408 rows/s

On a terminal the line is redrawn in place at most twice a second; in a log file or a pipe (Ray
workers, CI, ``make demo > log``) a full line is printed at each quarter of the stage and at the end,
so a stage costs five lines at most. tqdm draws the terminal case as well, but in a file it writes
every update onto one line joined by carriage returns; these are plain lines a log keeps readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A progress line for ``total`` units of work; ``update`` takes the amount done so far."""

    def __init__(self, label: str, total: int, unit: str = "rows", echo: Callable[[str], None] = print,
                 interactive: bool | None = None, quarters: int = 4):
        self.label, self.total, self.unit, self.echo = label, max(int(total), 1), unit, echo
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.marks = [self.total * q // quarters for q in range(1, quarters)]  # where a log gets a line
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.done = 0
        self.closed = False

    def line(self, note: str = "") -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.label} {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%)"
        if self.done >= self.total:
            text += f" in {format_duration(elapsed)}, {rate:.3g} {self.unit}/s"
        else:
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            text += f", {rate:.3g} {self.unit}/s, ETA {format_duration(eta) if eta == eta else '?'}"
        return f"{text}, {note}" if note else text

    def update(self, done: int, note: str = "") -> None:
        before, self.done = self.done, min(int(done), self.total)
        if self.interactive:
            now = time.perf_counter()
            if now - self.last_draw >= 0.5 or self.done >= self.total:
                sys.stdout.write("\r\033[K" + self.line(note))
                sys.stdout.flush()
                self.last_draw = now
        elif self.done < self.total and any(before < mark <= self.done for mark in self.marks):
            self.echo(self.line(note))
        if self.done >= self.total:
            self.close(note)

    def close(self, note: str = "") -> None:
        """The final line (once), with the total time."""
        if self.closed:
            return
        self.closed = True
        if self.interactive:
            sys.stdout.write("\r\033[K" + self.line(note) + "\n")
            sys.stdout.flush()
        else:
            self.echo(self.line(note))
