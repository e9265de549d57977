"""The harness process: boots the harness, then runs scenarios named on stdin.

Started by :class:`pythonqt.client.Worker` (``Testing/test_widget_qt.py``)::

    python Testing/pythonqt/worker.py <scenario module> <checkpoint>

Each stdin line is a scenario name; each answer is one stdout line starting with :data:`MARK`
and holding JSON (``ok``, ``error``, ``assertion``, ``seconds``, ``cpu_seconds``). Everything
else the scenario prints goes to stdout/stderr as usual.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

MARK = "@@PYTHONQT-HARNESS@@"


def _answer(payload: dict) -> None:
    sys.stdout.write(f"{MARK} {json.dumps(payload)}\n")
    sys.stdout.flush()


def main() -> int:
    scenario_module, checkpoint = sys.argv[1], sys.argv[2]
    testing = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(testing)]
    from pythonqt.harness import boot
    from pythonqt.session import Env

    started = time.perf_counter()
    harness = boot()
    env = Env(harness, checkpoint)
    scenarios = importlib.import_module(scenario_module).SCENARIOS
    problems = harness.check()
    _answer({"ready": not problems, "error": "\n".join(problems),
             "seconds": time.perf_counter() - started})
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        started, cpu = time.perf_counter(), time.process_time()
        try:
            env.begin()
        except BaseException:  # noqa: BLE001 - reported to the test
            _answer({"ok": False, "error": traceback.format_exc(), "assertion": False,
                     "seconds": time.perf_counter() - started})
            continue
        try:
            scenarios[name](env)
            failed = None
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            failed = (traceback.format_exc(), isinstance(exc, AssertionError))
        try:
            env.end()
            problems = ""
        except AssertionError as exc:
            problems = str(exc)
        if failed is None and not problems:
            result = {"ok": True}
        elif failed is None:
            result = {"ok": False, "error": "printed or left over:\n" + problems, "assertion": False}
        else:
            text = failed[0] + ("\nAlso printed or left over:\n" + problems if problems else "")
            result = {"ok": False, "error": text, "assertion": failed[1]}
        result["seconds"] = time.perf_counter() - started
        result["cpu_seconds"] = time.process_time() - cpu  # every thread of the process
        _answer(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
