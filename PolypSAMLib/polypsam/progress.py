"""Progress for long command-line runs: a tqdm bar on a terminal, plain lines in a log.

Redirected to a file (nohup, SLURM, a service), a bar shows nothing until the run ends, so
:func:`progress_bar` returns a :class:`PlainProgress` instead: one line at every 10 % of the
total, and at least one every 30 s while the run works on (a slow step included), each with
the count, the time elapsed and an estimate of the time left.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import TextIO


def progress_bar(total: int | None, desc: str, unit: str, *, enabled: bool = True,
                 leave: bool = True, every_update: bool = False, stream: TextIO | None = None):
    """A tqdm bar on a terminal, else :class:`PlainProgress` lines on ``stream`` (stderr).

    ``leave=False`` marks a detail bar (the batches of one epoch): shown on a terminal only.
    ``every_update``: a line per update in a log (one per fine-tuning epoch).
    """
    stream = stream or sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    if not enabled or (not interactive and not leave):
        return PlainProgress(total, desc, unit, stream=stream, silent=True)
    if not interactive:
        return PlainProgress(total, desc, unit, stream=stream, every_update=every_update)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, leave=leave)


class PlainProgress:
    """The part of tqdm's interface PolypSAM uses, written as plain lines.

    A line when the count passes each tenth of ``total`` (every update with ``every_update``),
    and from a background thread whenever ``seconds`` pass without one.
    """

    def __init__(self, total: int | None, desc: str, unit: str, *, stream: TextIO,
                 every_update: bool = False, seconds: float = 30.0, silent: bool = False) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.stream, self.every_update, self.seconds = stream, every_update, float(seconds)
        self.silent = silent
        self._start = self._last_line = time.monotonic()
        self._tenths = 0
        self._postfix = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if not silent:
            self._thread = threading.Thread(target=self._heartbeat, name=f"progress {desc}",
                                            daemon=True)
            self._thread.start()

    def update(self, count: int = 1) -> None:
        with self._lock:
            self.n += count
            tenths = math.floor(10 * self.n / self.total) if self.total else 0
            if count and (self.every_update or tenths > self._tenths):
                self._tenths = tenths
                self._line()

    def set_postfix(self, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def write(self, message: str, file: TextIO | None = None) -> None:
        if not self.silent or file is not None:
            print(message, file=file or self.stream, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def describe(self) -> str:
        """``propagate: 4/10 slices (40%), 12 s elapsed, about 18 s left``."""
        elapsed = time.monotonic() - self._start
        units = self.unit if self.total == 1 else self.unit + "s"
        text = f"{self.desc}: {self.n}/{self.total if self.total else '?'} {units}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {_duration(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            text += f", about {_duration(elapsed / self.n * (self.total - self.n))} left"
        return text + (f", {self._postfix}" if self._postfix else "")

    def _line(self) -> None:
        if self.silent:
            return
        self._last_line = time.monotonic()
        print(self.describe(), file=self.stream, flush=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(max(0.05, self._last_line + self.seconds - time.monotonic())):
            with self._lock:
                if time.monotonic() - self._last_line >= self.seconds:
                    self._line()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
