"""One batch case: read the input, run segment/propagate/track through the library, write outputs.

Each case owns the folder ``OUTDIR/<case_id>/``:

* ``mask.png`` (a frame), ``labelmap.nii.gz`` (a volume, on the input's grid; ``.nrrd`` with
  ``labelmap_suffix``) or ``masks/<frame>.png`` (a sequence);
* ``case.json``: status, prompts, provenance (``engine.info.provenance()``), timings, scores.

Every model call of a case runs with ``plan.threads`` torch threads, in this process or on a
worker (float sums over another thread count can move a pixel or a voxel), so a batch on
``--workers`` gives the same outputs as one in this process; the count is recorded in
``case.json`` and its provenance (``torch_threads``).

``case.json`` is written last, atomically (temporary file + ``os.replace``), and carries a
fingerprint of everything that decides the outputs (the case's row, the engine settings and the
thread count). A
case is finished when its ``case.json`` says ``"status": "ok"`` with the same fingerprint and
every output it lists exists; anything else (no JSON: interrupted; failed; a changed row or
model) runs again from an emptied folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import InvalidInputError, PolypSAMError
from .manifest import Case

CASE_JSON = "case.json"
CASE_MARKER = ".polypsam-case"  # marks a folder this module may empty when the case runs again
FORMAT = 1  # bump when the output layout changes: older outputs then run again


@dataclass(frozen=True)
class BatchPlan:
    """What every case shares: where outputs go and which model runs (picklable, for Dask)."""

    outdir: Path
    settings: object  # polypsam.engines.EngineSettings
    allow_download: bool = False
    window: str = ""  # default intensity (the CLI's --window); a row's own window wins
    labelmap_suffix: str = ".nii.gz"
    threads: int = 0  # torch threads of every model call; 0: this process's count (run_batch)
    overlay: bool = False  # also overlay.png (a frame or slice) or overlay/ (slices, frames)

    def case_dir(self, case: Case) -> Path:
        return self.outdir / case.case_id


@dataclass
class CaseResult:
    """What happened to one case (also the content of its ``case.json``)."""

    case_id: str
    status: str  # ok | failed | skipped (finished by an earlier run)
    input: str
    task: str = ""
    error: str = ""
    outputs: list[str] = field(default_factory=list)  # relative to the case folder
    reference: str | None = None
    record: dict = field(default_factory=dict)


EngineProvider = Callable[[object], tuple[object, float]]
"""``provider(settings) -> (engine, seconds spent loading it now; 0.0 when it was cached)``."""


def fingerprint(case: Case, plan: BatchPlan) -> str:
    from dataclasses import asdict

    data = {"format": FORMAT, "case": case.describe(), "settings": asdict(plan.settings),
            "window": case.window or plan.window, "labelmap_suffix": plan.labelmap_suffix,
            "threads": plan.threads}
    if plan.overlay:  # only then, so that earlier outputs stay finished
        data["overlay"] = True
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def finished(case: Case, plan: BatchPlan) -> dict | None:
    """The ``case.json`` of a case finished with these settings, or ``None``."""
    folder = plan.case_dir(case)
    try:
        record = json.loads((folder / CASE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("status") != "ok" or record.get("fingerprint") != fingerprint(case, plan):
        return None
    if not all((folder / rel).exists() for rel in record.get("outputs", [None])):
        return None
    return record


def _fresh_case_folder(folder: Path) -> None:
    """An empty case folder; an earlier run's folder (it has the marker file) is emptied first.

    A folder without the marker is never deleted: it may be the user's (e.g. OUTDIR set to the
    input folder).
    """
    if folder.exists():
        if not (folder / CASE_MARKER).is_file() and (not folder.is_dir() or any(folder.iterdir())):
            raise InvalidInputError(f"{folder} exists and is not a PolypSAM case folder: move it or"
                                    " choose another output folder or case_id")
        shutil.rmtree(folder)  # an interrupted, failed or outdated run of this case
    folder.mkdir(parents=True)
    (folder / CASE_MARKER).write_text("written by polypsam batch; the folder is replaced when the"
                                      " case runs again\n", encoding="utf-8")


def skipped(case: Case, record: dict) -> CaseResult:
    """The result of a case finished by an earlier run (``record``: its ``case.json``)."""
    return CaseResult(case.case_id, "skipped", str(case.input), record.get("task", case.task),
                      outputs=record.get("outputs", []), reference=record.get("reference"),
                      record=record)


def write_json_atomic(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_case(case: Case, plan: BatchPlan, engine_provider: EngineProvider) -> CaseResult:
    """Run one case unless it is already finished; never raises for a bad case (status failed).

    ``KeyboardInterrupt`` passes through (the case stays unfinished and runs again next time).
    """
    done = finished(case, plan)
    if done is not None:
        return skipped(case, done)
    folder = plan.case_dir(case)
    try:
        _fresh_case_folder(folder)
    except PolypSAMError as exc:  # not ours: leave it alone, report the case
        return CaseResult(case.case_id, "failed", str(case.input), case.task, error=str(exc),
                          record={"manifest_row": case.row})
    record: dict = {
        "case_id": case.case_id, "manifest_row": case.row, "input": str(case.input),
        "kind": case.kind, "task": case.task, "prompts": case.prompts(),
        "window": case.window or plan.window or None,
        "reference": str(case.reference) if case.reference else None,
        "manifest_columns": dict(case.extra),  # the row's other columns (notes...), as they are
        "torch_threads": plan.threads or None,
        "fingerprint": fingerprint(case, plan), "polypsam_version": __version__,
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        with model_threads(plan.threads) as used:
            record["torch_threads"] = used  # as torch reports it inside the case
            outputs, extra = _run(case, plan, engine_provider, folder, timings, record)
        record.update(extra, status="ok", outputs=outputs, error=None)
    except Exception as exc:  # a bad case is recorded, never stops the batch
        record.update(status="failed", outputs=[], error=_message(exc))
    timings["total_s"] = time.perf_counter() - start
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(record, folder / CASE_JSON)
    return CaseResult(case.case_id, record["status"], str(case.input), record["task"],
                      error=record["error"] or "", outputs=record["outputs"],
                      reference=record["reference"], record=record)


def _message(exc: BaseException) -> str:
    if isinstance(exc, PolypSAMError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"


def _intensity(case: Case, plan: BatchPlan):
    from ..preprocess import parse_intensity

    text = case.window or plan.window
    return parse_intensity(text) if text else None


def _engine(provider: EngineProvider, plan: BatchPlan, timings: dict, record: dict,
            case: Case, scalar: bool):
    """The engine; records it and the intensity the case applies (the row's window, --window,
    else the checkpoint's fine-tuning intensity, which the engine applies itself)."""
    from ..export import make_provenance
    from ..provenance import intensity_provenance

    engine, load_s = provider(plan.settings)
    timings["engine_load_s"] = load_s
    record["engine_loaded"] = load_s > 0
    info = engine.info
    trained = info.default_intensity(None) if hasattr(info, "default_intensity") else None
    _, record["intensity"] = intensity_provenance(
        _intensity(case, plan), "the row's window" if case.window else "--window", trained, scalar)
    # engine.info.provenance() + prompts, version, date: what `polypsam export --provenance` reads
    record["provenance"] = make_provenance(info, prompts=record["prompts"],
                                           source=record["input"], command="batch",
                                           torch_threads=record["torch_threads"],
                                           intensity=record["intensity"])
    return engine


def default_threads(plan: BatchPlan) -> BatchPlan:
    """``plan`` with its thread count fixed: this process's torch thread count unless given
    (a server engine's threads are the server's: 0)."""
    if plan.threads or getattr(plan.settings, "kind", "") == "server":
        return plan
    import torch

    return replace(plan, threads=torch.get_num_threads())


@contextlib.contextmanager
def model_threads(count: int):
    """torch's intra-op thread count set to ``count`` for the duration (0: left alone); yields
    the count torch reports then (``None`` when left alone)."""
    if not count:
        yield None
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _run(case: Case, plan: BatchPlan, provider: EngineProvider, folder: Path, timings: dict,
         record: dict) -> tuple[list[str], dict]:
    if case.kind == "image":
        return _segment_image(case, plan, provider, folder, timings, record)
    if case.kind == "volume":
        return _volume(case, plan, provider, folder, timings, record)
    return _track(case, plan, provider, folder, timings, record)


def _segment_image(case, plan, provider, folder, timings, record):
    from .. import io
    from ..overlay import labelmap_from_masks

    t = time.perf_counter()
    image = io.read_image(case.input)
    prompts = case.object_prompts(image.shape[1], image.shape[0])
    intensity = _intensity(case, plan)
    timings["read_s"] = time.perf_counter() - t
    engine = _engine(provider, plan, timings, record, case, image.ndim == 2)
    t = time.perf_counter()
    results = engine.segment_2d(image, prompts, intensity=intensity)
    timings["compute_s"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = labelmap_from_masks(results)
    io.write_png(labels, folder / "mask.png")
    outputs = ["mask.png"] + _overlays(plan, folder, image[None], labels[None], range(1), intensity,
                                       0, prompts)
    timings["write_s"] = time.perf_counter() - t
    return outputs, {"scores": {str(i): r.score for i, r in enumerate(results, start=1)}}


def _volume(case, plan, provider, folder, timings, record):
    from .. import io
    from ..geometry import check_index, check_slice_range
    from ..overlay import labelmap_from_masks
    from ..propagation import propagate

    t = time.perf_counter()
    volume = io.read_volume(case.input)
    nk, nj, ni = volume.shape
    task = case.task or ("segment" if nk == 1 else "propagate")
    record["task"] = task
    prompts = case.object_prompts(ni, nj)
    intensity = _intensity(case, plan)
    name = "labelmap" + plan.labelmap_suffix
    if task == "segment":
        if case.key_slice is None and nk != 1:
            raise InvalidInputError(f"the volume has {nk} slices: give key_slice for segment")
        k = check_index(case.key_slice or 0, nk, f"key_slice {case.key_slice}",
                        "the volume's slices")
        timings["read_s"] = time.perf_counter() - t
        engine = _engine(provider, plan, timings, record, case, True)
        t = time.perf_counter()
        results = engine.segment_2d(volume.array[k], prompts, intensity=intensity)
        labels = np.zeros(volume.shape, dtype=np.uint8 if len(prompts) < 256 else np.uint16)
        labels[k] = labelmap_from_masks(results)
        timings["compute_s"] = time.perf_counter() - t
        extra = {"scores": {str(i): r.score for i, r in enumerate(results, start=1)},
                 "key_slice": k}
        labelmap = volume.with_array(labels)
        shown, key, refinements = range(k, k + 1), k, []
    else:
        k0, k1 = check_slice_range(case.slices, nk, "slices")
        if case.key_slice is not None:
            check_index(case.key_slice, nk, f"key_slice {case.key_slice}", "the volume's slices")
        refinements = case.refinements(nk)
        timings["read_s"] = time.perf_counter() - t
        engine = _engine(provider, plan, timings, record, case, True)
        t = time.perf_counter()
        result = propagate(engine, volume, prompts, (k0, k1), case.key_slice,
                           refinements=refinements, intensity=intensity)
        timings["compute_s"] = time.perf_counter() - t
        labelmap = result.labelmap
        shown, key = range(result.slices[0], result.slices[1] + 1), result.key_slice
        extra = {"scores": {str(k): v for k, v in result.scores.items()},
                 "key_slice": result.key_slice, "slices_written": list(result.slices)}
    t = time.perf_counter()
    io.write_volume(labelmap, folder / name)
    outputs = [name] + _overlays(plan, folder, volume.array, labelmap.array, shown, intensity, key,
                                 prompts, refinements)
    timings["write_s"] = time.perf_counter() - t
    return outputs, extra


def _track(case, plan, provider, folder, timings, record):
    from .. import io
    from ..frames import read_frames
    from ..geometry import check_index
    from ..propagation import iter_track

    t = time.perf_counter()
    frames = read_frames(case.input)
    n = len(frames)
    index = check_index(case.frame or 0, n, f"frame {case.frame or 0}", "the sequence's frames")
    first = np.asarray(frames[index])
    prompts = case.object_prompts(first.shape[1], first.shape[0])
    refinements = case.refinements(n)
    intensity = _intensity(case, plan)
    names = list(getattr(frames, "names", None) or [f"{i:04d}" for i in range(n)])
    timings["read_s"] = time.perf_counter() - t
    engine = _engine(provider, plan, timings, record, case, first.ndim == 2)
    t = time.perf_counter()
    written = []
    for frame, labels, _scores in iter_track(engine, frames, index, prompts,
                                             refinements=refinements, intensity=intensity):
        written.append(str(io.write_png(labels, folder / "masks" / f"{names[frame]}.png")
                           .relative_to(folder)))
        if plan.overlay:
            from ..overlay import draw_overlay, prompt_marks

            here = prompts if frame == index else [r for r in refinements if r.frame == frame]
            boxes, points = prompt_marks(here)
            io.write_png(draw_overlay(np.asarray(frames[frame]), labels, intensity, points=points,
                                      boxes=boxes if frame == index else ()),
                         folder / "overlay" / f"{names[frame]}.png")
    timings["compute_s"] = time.perf_counter() - t
    return ["masks"] + ["overlay"] * plan.overlay, {"frames_written": len(written), "frame": index}


def _overlays(plan, folder, array, labels, shown, intensity, key, prompts, refinements=()):
    """With ``plan.overlay``: ``overlay.png`` for one slice/frame, else ``overlay/slice_K.png``."""
    if not plan.overlay:
        return []
    from .. import io
    from ..overlay import slice_overlay_name, slice_overlays

    pictures = slice_overlays(array, labels, shown, intensity, key=key, prompts=prompts,
                              refinements=refinements)
    if len(shown) == 1:
        io.write_png(next(pictures)[1], folder / "overlay.png")
        return ["overlay.png"]
    for k, picture in pictures:
        io.write_png(picture, folder / "overlay" / slice_overlay_name(k))
    return ["overlay"]
