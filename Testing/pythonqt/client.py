"""The test process's side: a harness process (:mod:`worker`) that runs named scenarios.

The harness replaces ``qt``, ``slicer.util`` and ``sys.excepthook`` for its whole process, so it
runs in its own; one process serves every scenario of a test module (booting Qt, slicer-core and
the model once). A crashed or hung process is replaced for the next scenario.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .worker import MARK

WORKER = Path(__file__).resolve().with_name("worker.py")


class ScenarioFailed(AssertionError):
    """An assertion of a scenario failed in the harness process (its traceback is the message)."""


class ScenarioError(RuntimeError):
    """A scenario raised something else, printed an error, left a dialog unanswered, or the
    harness process failed."""


class Worker:
    def __init__(self, scenario_module: str, checkpoint: str, env: dict[str, str] | None = None,
                 timeout: float = 300.0, python: tuple[str, ...] = (sys.executable,)) -> None:
        """``python``: the interpreter and its options (``python -S``: only ``PYTHONPATH``'s packages)."""
        self._args = [*python, str(WORKER), scenario_module, checkpoint]
        self._env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **(env or {})}
        self._timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self.timings: dict[str, tuple[float, float]] = {}  # scenario -> (wall s, CPU s)

    def _start(self) -> None:
        self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=self._env,
                                      cwd=str(WORKER.parents[2]))
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True).start()
        ready, output = self._wait()
        if not ready.get("ready"):
            raise ScenarioError(f"the harness did not start:\n{ready.get('error', '')}\n{output}")
        self.timings["(boot)"] = (ready["seconds"], 0.0)

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _wait(self) -> tuple[dict[str, Any], str]:
        output: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=self._timeout)
            except queue.Empty:
                self.close()
                return {"ok": False, "error": f"no answer in {self._timeout:.0f} s"}, "".join(output[-200:])
            if line is None:
                self._proc.wait()
                code = self._proc.returncode
                self._proc = None
                return {"ok": False, "error": f"the harness process ended (exit code {code})"}, \
                    "".join(output[-200:])
            if line.startswith(MARK):
                return json.loads(line[len(MARK):]), "".join(output[-200:])
            output.append(line)

    def run(self, name: str) -> None:
        if self._proc is None:
            self._start()
        self._proc.stdin.write(name + "\n")
        self._proc.stdin.flush()
        result, output = self._wait()
        if "seconds" in result:
            self.timings[name] = (result["seconds"], result.get("cpu_seconds", 0.0))
        if not result.get("ok"):
            kind = ScenarioFailed if result.get("assertion") else ScenarioError
            raise kind(f"{result.get('error', '')}\n--- harness output ---\n{output}")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def scenario_registry() -> tuple[dict[str, Callable], Callable]:
    """``SCENARIOS`` and the ``in_harness`` decorator of a test module: the decorated function
    runs in the harness process with an :class:`~pythonqt.session.Env`; pytest sees a test that
    asks the ``harness`` fixture to run it."""
    scenarios: dict[str, Callable] = {}

    def in_harness(fn: Callable) -> Callable:
        scenarios[fn.__name__] = fn

        def test(harness) -> None:
            harness.run(fn.__name__)

        test.__name__ = fn.__name__
        test.__qualname__ = fn.__qualname__
        test.__doc__ = fn.__doc__
        test.__module__ = fn.__module__
        return test

    return scenarios, in_harness
