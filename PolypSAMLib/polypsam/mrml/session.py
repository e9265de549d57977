"""The one entry point for every button and click tool, and the state the click tools keep.

:func:`start` reads the scene for a :class:`~.shapes.Request` (the action's plan: :data:`PLANS`),
starts its model work (on the :class:`~.shapes.RunContext`'s worker, or here) and returns a
:class:`Run`. The caller waits (:meth:`Run.wait`, serving its own events meanwhile), then
:meth:`Run.write` writes through the one writer (:mod:`.writer`); :func:`run` does all three.
Nothing here calls back into the caller: a GUI polls the run.

A failed or cancelled model run writes nothing; a failed write restores the undo step it saved.
:func:`check_inputs` refuses a request that lacks an input before anything else happens (no
install, download, model load or new node).

:class:`Session` keeps what outlives one run: the last click result (its candidates) and the last
propagation, which the next click continues from. It hands them to the next request on the same
input, segmentation and segment, and forgets them when one of those changes, when the input's
voxels on the candidates' slice change (another time point, a reloaded image) or the scene closes
(then PolypSAM's undo history goes too: it holds the closing scene's segments, and a run under way
is cancelled: it would write into the closed scene's nodes).
"""

from __future__ import annotations

import hashlib
import weakref
from concurrent.futures import Future, wait
from typing import Any, Callable, Optional

import numpy as np
from vtk.util import numpy_support

from ..background import ProgressRelay
from ..errors import InvalidInputError
from . import history, interactive, operations, tracking, writer
from .clicks import click_lists
from .nodes import ijk_to_world
from .sequences import check_sequence_output
from .shapes import (
    BOX_ACTIONS, CLICK_ACTIONS, Plan, Request, Result, RunContext, check_cancel, require_input,
    require_rois,
)

#: The plan of each action: ``plan(request, engine, context) -> Plan`` (reads the scene).
PLANS: dict[str, Callable[[Request, Any, RunContext], Plan]] = {
    "segment": operations.segment,
    "propagate": operations.propagate,
    "track": tracking.track,
    "refine": operations.refine,
    "clicks": interactive.clicks,
    "candidate": interactive.candidate,
    "propagate-clicks": interactive.propagate_clicks,
    "start-from-segment": interactive.start_from_segment,
}


class Run:
    """One action under way: its scene reads are done and its model work runs (on the context's
    worker; without one it already ran). :meth:`progress` is the latest progress report,
    :meth:`write` writes the result, once."""

    def __init__(self, request: Request, plan: Plan, context: RunContext,
                 on_written: Optional[Callable[[Request, Result], None]] = None,
                 relay: Optional[ProgressRelay] = None) -> None:
        self.request, self.context = request, context
        self._plan, self._on_written = plan, on_written
        self._relay = relay or ProgressRelay()
        if context.worker is not None:
            self._future: Future = context.worker.submit(plan.compute)
        else:
            self._future = Future()
            try:
                self._future.set_result(plan.compute())
            except Exception as exc:  # noqa: BLE001 - raised again by check() and write()
                self._future.set_exception(exc)
        self._written = False

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Whether the model work has ended (successfully or not), waiting up to ``timeout`` s."""
        wait([self._future], timeout)
        return self._future.done()

    def progress(self) -> Optional[tuple[int, int, str]]:
        """The latest ``(done, total, message)`` reported since the last call, else ``None``."""
        return self._relay.take()

    def cancel(self) -> None:
        """Stop the model work at the next slice or frame; nothing will be written."""
        self.context.cancel.cancel()

    @property
    def cancelled(self) -> bool:
        return self.context.cancel.cancelled

    def check(self) -> None:
        """Wait for the model work; raise its error, or ``CancelledError`` if cancelled."""
        self._future.result()
        check_cancel(self.context.cancel)

    def write(self) -> Result:
        """Write the result (one undo step) and return what was written."""
        if self._written:
            raise RuntimeError("this run was written already")
        self.check()
        out = self._future.result()
        self._written = True
        plan, request = self._plan, self.request
        written = writer.write(request.segmentation_node, plan.writes(out), reference=plan.reference,
                               source=plan.source, editor_node=request.editor_node,
                               provenance=plan.provenance)
        result = plan.report(out, written)
        result.action = request.action
        result.segment_ids.update(written.segment_ids)
        if self._on_written is not None:
            self._on_written(request, result)
        return result


def start(request: Request, engine: Any = None, context: Optional[RunContext] = None, *,
          on_written: Optional[Callable[[Request, Result], None]] = None) -> Run:
    """Read the scene for ``request`` and start its model work; bad input raises here."""
    context = context or RunContext()
    if request.needs_engine and engine is None:
        raise InvalidInputError(f"no engine given for {request.action}")
    relay, report = ProgressRelay(), context.progress

    def progress(done: int, total: int, message: str) -> None:
        relay(done, total, message)
        report(done, total, message)

    context = RunContext(context.worker, progress, context.cancel)
    return Run(request, PLANS[request.action](request, engine, context), context, on_written, relay)


def check_inputs(request: Request) -> None:
    """Refuse ``request`` with one clear error naming what it lacks, before any install, download,
    model load or new node (a missing output segmentation is not refused: it is made then; an
    output that a sequence cannot use is)."""
    action, browser = request.action, request.browser_node
    if action == "track" or (action == "propagate-clicks" and request.video_browser is not None):
        if browser is None:
            raise InvalidInputError("no sequence browser selected: Track needs a video or a 4-D"
                                    " sequence")
        if action == "track":
            require_rois(request.rois)
        check_sequence_output(browser, request.segmentation_node)
        return
    node = require_input(request.input_node)
    if action in BOX_ACTIONS:
        require_rois(request.rois)
    if action in ("propagate", "propagate-clicks", "start-from-segment") and node.IsA(
            "vtkMRMLVectorVolumeNode"):
        raise InvalidInputError(f"{action} needs a scalar volume; '{node.GetName()}' is an RGB"
                                " frame (one slice)")
    if action == "start-from-segment" and request.segmentation_node is None:
        raise InvalidInputError("no output segmentation selected: Start from segment needs its"
                                " segment")


def run(request: Request, engine: Any = None, context: Optional[RunContext] = None) -> Result:
    """Run ``request`` to the end: read, compute (on the context's worker, if any), write."""
    started = start(request, engine, context)
    started.wait()
    return started.write()


class Session:
    """The click tools' state between runs, for one scene (``None``: never reset by a close)."""

    def __init__(self, scene: Any = None) -> None:
        self._scene = scene
        self._state: dict[str, tuple[tuple, Result]] = {}
        self._runs: "weakref.WeakSet[Run]" = weakref.WeakSet()  # runs not yet written
        self._observer = None
        if scene is not None:
            self._observer = scene.AddObserver(scene.StartCloseEvent, self._on_close)

    def _on_close(self, caller: Any = None, event: Any = None) -> None:
        for started in list(self._runs):  # its nodes leave with the scene: write nothing
            started.cancel()
        self.reset()
        history.forget_undo_history()

    def reset(self) -> None:
        """Forget the last click result and the last propagation."""
        self._state.clear()

    def close(self) -> None:
        """Stop following the scene; forget everything, PolypSAM's undo history too."""
        if self._observer is not None:
            self._scene.RemoveObserver(self._observer)
            self._observer = None
        self._on_close()

    @staticmethod
    def _key(request: Request, kind: str) -> tuple:
        """What the state of ``kind`` belongs to: input, segmentation, segment (and for
        candidates on a video, the frame shown: they are masks of that frame; for candidates,
        the input's voxels on their slice too: :meth:`_voxels_digest`)."""
        def node_id(node: Any) -> Optional[str]:
            return node.GetID() if node is not None else None

        video = request.video_browser
        key = (node_id(request.input_node), node_id(video), node_id(request.segmentation_node),
               request.segment)
        if kind == "candidates" and video is not None:
            key += (int(video.GetSelectedItemNumber()),)
        return key

    @staticmethod
    def _voxels_digest(node: Any, result: Result) -> str:
        """A digest of ``node``'s geometry and voxels on the slice of ``result``'s candidates: they
        were computed from that slice and belong to no other image on the same node."""
        image = node.GetImageData() if node is not None else None
        scalars = image.GetPointData().GetScalars() if image is not None else None
        if scalars is None or not result.candidates:
            return ""
        i, j, k = image.GetDimensions()
        flat = numpy_support.vtk_to_numpy(scalars)
        k_slice = min(max(result.candidates), k - 1)
        digest = hashlib.blake2b(np.ascontiguousarray(flat[k_slice * i * j:(k_slice + 1) * i * j]))
        digest.update(np.ascontiguousarray(ijk_to_world(node), dtype=float).tobytes())
        digest.update(repr((i, j, k, flat.dtype.str)).encode())
        return digest.hexdigest()

    def _kind(self, action: str) -> Optional[str]:
        if action == "candidate":
            return "candidates"
        if action in ("propagate-clicks", "start-from-segment"):
            return "propagation"
        return None

    def previous(self, request: Request) -> Optional[Result]:
        """The result ``request`` continues from (``None`` if the input or segment changed)."""
        kind = self._kind(request.action)
        stored = self._state.get(kind) if kind else None
        if stored is None:
            return None
        key = self._key(request, kind)
        if kind == "candidates":
            key += (self._voxels_digest(request.input_node, stored[1]),)
        if stored[0] != key:
            del self._state[kind]
            return None
        return stored[1]

    def request(self, action: str, parameters: Any, **fields: Any) -> Request:
        """The request of ``action`` from the module's parameter node and ``fields`` (segment,
        multimask, editor node...), with the segment's click lists and the previous result."""
        request = Request.from_parameter_node(action, parameters, **fields)
        if action in CLICK_ACTIONS and action != "candidate" and self._scene is not None:
            include, exclude = click_lists(self._scene, request.segment)
            request = request.with_(include=include, exclude=exclude)
        return request.with_(previous=self.previous(request))

    def _remember(self, request: Request, result: Result) -> None:
        if result.candidates:
            key = self._key(request, "candidates") + (
                self._voxels_digest(request.input_node, result),)
            self._state["candidates"] = (key, result)
        elif request.action == "clicks":
            self._state.pop("candidates", None)
        if result.propagation is not None or result.tracking is not None:
            self._state["propagation"] = (self._key(request, "propagation"), result)

    def start(self, request: Request, engine: Any = None, context: Optional[RunContext] = None) -> Run:
        """:func:`start`, keeping the result for the next click (a scene close cancels it)."""
        started = start(request, engine, context, on_written=self._remember)
        self._runs.add(started)
        return started

    def run(self, request: Request, engine: Any = None, context: Optional[RunContext] = None) -> Result:
        """:func:`run`, keeping the result for the next click."""
        started = self.start(request, engine, context)
        started.wait()
        return started.write()
