"""Running a manifest's cases: in this process, on N local processes, or on a Dask cluster.

Scaling is Dask's (``dask.distributed``): ``workers=N`` starts a
``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` on 127.0.0.1,
``scheduler=ADDRESS`` connects to an existing cluster. Wherever a case runs, its model calls use
``plan.threads`` torch threads (default: this process's count), so outputs do not depend on where
a case ran. Every worker process keeps one engine in a
module-level cache keyed by the engine settings, so the model loads once per worker, not once
per case; cases on one worker run one at a time (the engine is not shared between threads).
With a remote cluster, the inputs and OUTDIR must be at the same paths on every worker (a shared
file system) and the workers need polypsam installed.

Finished cases are skipped before anything is submitted (see :func:`runner.finished`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .manifest import Case, Manifest, RowError
from .runner import BatchPlan, CaseResult, default_threads, finished, run_case, skipped

SUMMARY_CSV = "summary.csv"
FAILURES_CSV = "failures.csv"
BATCH_LOG = "batch.log"


@dataclass
class BatchReport:
    """Per-case results in manifest order, plus the rows that could not be read."""

    results: list[CaseResult] = field(default_factory=list)
    row_errors: list[RowError] = field(default_factory=list)
    seconds: float = 0.0
    not_run: list[Case] = field(default_factory=list)  # cases an interruption left unstarted

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> int:
        return self.count("failed") + len(self.row_errors)


# -- the per-process engine (one per worker) --------------------------------------------------
_ENGINE_LOCK = threading.Lock()
_ENGINE: tuple | None = None  # (settings, engine) of this process, built on first use


def cached_engine(settings, allow_download: bool = False):
    """``(engine, seconds spent loading)`` from this process's cache (0.0 when cached).

    One engine per process, replaced when the settings change (through the one factory,
    :func:`polypsam.engines.create_engine`).
    """
    global _ENGINE
    from ..engines import create_engine

    if _ENGINE is not None and _ENGINE[0] == settings:
        return _ENGINE[1], 0.0
    release_cached_engine()
    start = time.perf_counter()
    engine = create_engine(settings, allow_download=allow_download)
    _ENGINE = (settings, engine)
    return engine, time.perf_counter() - start


def release_cached_engine() -> None:
    global _ENGINE
    if _ENGINE is not None:
        engine, _ENGINE = _ENGINE[1], None
        engine.close()


def run_case_here(case: Case, plan: BatchPlan) -> CaseResult:
    """Run one case with this process's cached engine (the task a Dask worker runs)."""
    with _ENGINE_LOCK:
        return run_case(case, plan, lambda s: cached_engine(s, plan.allow_download))


# -- scheduling -------------------------------------------------------------------------------
Progress = Callable[[CaseResult], None]


def run_batch(
    manifest: Manifest,
    plan: BatchPlan,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    engine=None,
    on_result: Progress | None = None,
) -> BatchReport:
    """Run every case of ``manifest`` (skipping finished ones) and write the batch summaries.

    ``workers=0`` and no ``scheduler``: cases run in this process, one after the other, with
    ``engine`` if given (else one built from ``plan.settings`` and closed at the end).
    ``plan.threads`` 0 becomes this process's torch thread count (see :func:`default_threads`).
    ``on_result`` is called once per case as it completes (a progress bar). Failed cases are
    recorded (``failures.csv``, ``batch.log``) and the batch goes on; ``KeyboardInterrupt``
    stops it, finished cases stay finished.
    """
    start = time.perf_counter()
    plan = default_threads(plan)
    plan.outdir.mkdir(parents=True, exist_ok=True)
    report = BatchReport(row_errors=list(manifest.errors))
    where = (f"on the Dask scheduler {scheduler}" if scheduler else
             f"on {workers} worker processes" if workers > 0 else "in this process")
    threads = f"{plan.threads} torch threads per model call" if plan.threads else \
        "the server's threads"
    log(plan.outdir, "START", f"{manifest.path}: {manifest.rows} rows ({len(manifest.cases)}"
        f" cases, {len(manifest.errors)} invalid), {where}, {threads}")
    log_failures(plan.outdir, [f"row {e.row}: {e.input or '(no input)'}: {e.message}"
                       for e in manifest.errors])
    by_id: dict[str, CaseResult] = {}
    todo: list[Case] = []
    for case in manifest.cases:
        record = finished(case, plan)
        if record is None:
            todo.append(case)
            continue
        by_id[case.case_id] = skipped(case, record)
        log(plan.outdir, "SKIPPED", f"case {case.case_id}: finished by an earlier run")
        if on_result is not None:
            on_result(by_id[case.case_id])

    def done(result: CaseResult) -> None:
        by_id[result.case_id] = result
        if result.status == "failed":
            log_failures(plan.outdir, [f"case {result.case_id}: {result.input}: {result.error}"])
        else:
            seconds = result.record.get("timings", {}).get("total_s", 0.0)
            log(plan.outdir, "OK", f"case {result.case_id}: {', '.join(result.outputs)}"
                f" ({seconds:.1f} s)")
        if on_result is not None:
            on_result(result)

    finished_all = False
    try:
        if todo and (workers > 0 or scheduler):
            _run_on_dask(todo, plan, workers, scheduler, done)
        elif todo:
            _run_here(todo, plan, engine, done)
        finished_all = True
    finally:
        report.results = [by_id[c.case_id] for c in manifest.cases if c.case_id in by_id]
        report.not_run = [c for c in manifest.cases if c.case_id not in by_id]
        report.seconds = time.perf_counter() - start
        write_summaries(report, plan.outdir, manifest)
        log(plan.outdir, "END" if finished_all else "INTERRUPTED",
            f"{report.count('ok')} ok, {report.count('skipped')} finished earlier,"
            f" {report.count('failed')} failed, {len(report.row_errors)} invalid rows,"
            f" {len(report.not_run)} not run ({report.seconds:.1f} s)")
    return report


def _run_here(cases: list[Case], plan: BatchPlan, engine, done: Progress) -> None:
    if engine is not None:
        for case in cases:
            done(run_case(case, plan, lambda s: (engine, 0.0)))
        return
    try:
        for case in cases:
            done(run_case_here(case, plan))
    finally:
        release_cached_engine()


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def _own_thread_settings():
    """Keep this process's thread settings: ``distributed`` sets ``OMP_NUM_THREADS=1`` (and the
    MKL/OpenBLAS twins) in the *calling* process's environment for its workers, and leaves them
    there, so every process started later (a server, a subprocess) would run single-threaded."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_on_dask(cases: list[Case], plan: BatchPlan, workers: int, scheduler: str | None,
                 done: Progress) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        from ..errors import InvalidInputError

        raise InvalidInputError("--workers and --scheduler need the packages dask and distributed"
                                " (pip install dask distributed)") from exc
    if scheduler:
        cluster = None
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, ValueError) as exc:
            from ..errors import InvalidInputError

            raise InvalidInputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    else:
        with _own_thread_settings(), _ctrl_c_ignored():  # the workers inherit it ignored
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.ERROR)
            client = Client(cluster)
        _workers_ignore_ctrl_c(client)  # and so do workers started again later
    with _quiet_dask_on_ctrl_c():  # also while the cluster closes after a Ctrl-C
        try:
            futures = client.map(run_case_here, cases, plan=plan, pure=False)
            case_of = {f.key: c for f, c in zip(futures, cases)}
            try:
                for future in as_completed(futures):
                    case = case_of[future.key]
                    try:
                        result = future.result()
                    except Exception as exc:  # the worker died (KilledWorker) or the task broke
                        result = CaseResult(case.case_id, "failed", str(case.input), case.task,
                                            error=f"{type(exc).__name__}: {exc}",
                                            record={"manifest_row": case.row})
                    done(result)
            except BaseException:
                client.cancel(futures)
                raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def _ctrl_c_ignored():
    """Ctrl-C reaches every process of the terminal's group: local workers must ignore it (else
    each prints a KeyboardInterrupt traceback) and this process stops them. Processes started
    while it is ignored here ignore it for life; a Ctrl-C during those seconds is lost."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _workers_ignore_ctrl_c(client) -> None:
    """Workers that start later (a worker restarted after a crash) ignore Ctrl-C as well."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreCtrlC(WorkerPlugin):
        def setup(self, worker) -> None:
            import signal

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    client.register_plugin(IgnoreCtrlC(), name="polypsam-ignore-ctrl-c")


@contextlib.contextmanager
def _quiet_dask_on_ctrl_c():
    """On Ctrl-C, silence Dask's and tornado's loggers before the interrupt unwinds: cancelling
    and closing the cluster then prints nothing, and PolypSAM's line is the only one."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loggers = [logging.getLogger(name) for name in ("distributed", "tornado", "asyncio")]
    levels = [log.level for log in loggers]
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(_signum, _frame):
        for log in loggers:
            log.setLevel(logging.CRITICAL + 1)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for log, level in zip(loggers, levels):
            log.setLevel(level)


# -- summaries --------------------------------------------------------------------------------
SUMMARY_FIELDS = ["row", "case_id", "status", "task", "input", "outputs", "reference", "seconds",
                  "error"]
STATUSES = {
    "ok": "ran and finished",
    "skipped": "finished by an earlier run (same row and settings): not run again",
    "failed": "ran and failed (error says why); runs again next time",
    "invalid": "the row could not be read (error says why); nothing ran",
    "not run": "not started: the batch was interrupted first",
}


def write_summaries(report: BatchReport, outdir: Path, manifest: Manifest | None = None) -> None:
    """``summary.csv`` (every manifest row, in order, with its status: see :data:`STATUSES`, and
    the manifest's extra columns) and ``failures.csv`` (failed cases and invalid rows)."""
    extra = list(manifest.extra_columns) if manifest is not None else []
    lines = []
    for r in report.results:
        case = r.record.get("manifest_row", 0)
        seconds = r.record.get("timings", {}).get("total_s", "")
        lines.append({"row": case, "case_id": r.case_id, "status": r.status, "task": r.task,
                      "input": r.input, "outputs": ";".join(r.outputs),
                      "reference": r.reference or "", "seconds": seconds, "error": r.error})
    for e in report.row_errors:
        lines.append({"row": e.row, "case_id": e.case_id, "status": "invalid", "input": e.input,
                      "error": e.message, **dict(e.extra)})
    for c in report.not_run:
        lines.append({"row": c.row, "case_id": c.case_id, "status": "not run", "task": c.task,
                      "input": str(c.input), "reference": str(c.reference or "")})
    if manifest is not None:
        by_id = {c.case_id: c for c in manifest.cases}
        for line in lines:
            case = by_id.get(line["case_id"])
            if case is not None and line["status"] != "invalid":
                line["row"] = case.row
                line.update(dict(case.extra))
    with (outdir / SUMMARY_CSV).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, SUMMARY_FIELDS + [c for c in extra if c not in SUMMARY_FIELDS],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(lines, key=lambda line: int(line["row"] or 0)))
    failures = [{"row": e.row, "case_id": e.case_id, "input": e.input, "error": e.message}
                for e in report.row_errors]
    failures += [{"row": r.record.get("manifest_row", 0), "case_id": r.case_id, "input": r.input,
                  "error": r.error} for r in report.results if r.status == "failed"]
    with (outdir / FAILURES_CSV).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["row", "case_id", "input", "error"])
        writer.writeheader()
        writer.writerows(sorted(failures, key=lambda f: f["row"]))


def log(outdir: Path, what: str, line: str) -> None:
    """Append one timestamped line to ``OUTDIR/batch.log`` (START, OK, SKIPPED, FAILED, END...)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with (outdir / BATCH_LOG).open("a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {what} {line}\n")


def log_failures(outdir: Path, lines: list[str]) -> None:
    """Append timestamped ``FAILED`` lines to ``OUTDIR/batch.log``."""
    for line in lines:
        log(outdir, "FAILED", line)
