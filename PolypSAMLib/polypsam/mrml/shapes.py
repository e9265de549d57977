"""The shapes every PolypSAM operation shares: one request in, one plan, one result out.

* :class:`Request` is what a button or click tool runs on, read once from the module's parameter
  node (:meth:`Request.from_parameter_node`): nodes, settings, the click tools' target segment
  and point lists, and the previous result a click continues from (kept by
  :class:`~polypsam.mrml.session.Session`).
* :class:`RunContext` is how it runs: where the model work runs, how progress is reported, how it
  is cancelled.
* :class:`Plan` is an operation after its scene reads (see :mod:`.operations`,
  :mod:`.tracking`, :mod:`.interactive`): model work that touches no MRML or VTK object, and the
  typed writes (:mod:`.writer`) it makes of that work's output.
* :class:`Result` is what the run wrote and found.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

from ..engine import CancelToken
from ..errors import InvalidInputError

#: What a button or click tool runs (the one entry point dispatches on it).
BOX_ACTIONS = ("segment", "propagate", "track", "refine")
CLICK_ACTIONS = ("clicks", "candidate", "propagate-clicks", "start-from-segment")
ACTIONS = BOX_ACTIONS + CLICK_ACTIONS
#: Actions that run no model (no engine needed): choosing another candidate.
MODEL_FREE_ACTIONS = ("candidate",)

ProgressFn = Callable[[int, int, str], None]


def noop_progress(done: int, total: int, message: str) -> None:
    del done, total, message


@dataclass(frozen=True)
class Request:
    """What one action runs on (nodes are MRML nodes; ``-1`` means automatic).

    ``rois`` are the checked box ROIs; the click actions use the first one as the object's box.
    ``segment`` is the click tools' target segment and ``include``/``exclude`` its point lists.
    ``candidate`` is the candidate to write (``-1``: the next one). ``previous`` is the result the
    action continues from: the click result whose candidates ``candidate`` cycles, or the
    propagation a new click re-runs only partly.
    """

    action: str
    input_node: Any = None
    browser_node: Any = None
    rois: Sequence[Any] = ()
    segmentation_node: Any = None
    key_slice: int = -1
    slice_range: tuple[int, int] = (-1, -1)
    window_preset: str = "display"
    editor_node: Any = None  # the Segment Editor's node: its masking settings limit the writes
    segment: str = ""
    include: Any = None
    exclude: Any = None
    multimask: bool = False
    candidate: int = -1
    previous: Optional["Result"] = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InvalidInputError(f"unknown operation {self.action!r}: use one of {', '.join(ACTIONS)}")
        object.__setattr__(self, "rois", tuple(r for r in self.rois if r is not None))
        object.__setattr__(self, "slice_range", tuple(int(v) for v in self.slice_range))

    @classmethod
    def from_parameter_node(cls, action: str, parameters: Any, **fields: Any) -> "Request":
        """The request of ``action`` from the module's parameter node (``PolypSAMParameterNode``:
        its fields are read by name), plus ``fields`` (segment, clicks, previous result...)."""
        p = parameters
        return cls(
            action, input_node=p.inputVolume, browser_node=p.inputSequenceBrowser, rois=tuple(p.rois),
            segmentation_node=p.outputSegmentation, key_slice=int(p.keySlice),
            slice_range=(int(p.sliceRangeStart), int(p.sliceRangeEnd)),
            window_preset=p.windowPreset, **fields)

    def with_(self, **fields: Any) -> "Request":
        return replace(self, **fields)

    @property
    def needs_engine(self) -> bool:
        """Whether the action runs the model (choosing a candidate does not)."""
        return self.action not in MODEL_FREE_ACTIONS

    @property
    def video_browser(self) -> Any:
        """The sequence browser when clicks go on a video's frames: the input is its proxy RGB
        frame, or there is no input and the browser shows RGB frames; else ``None``."""
        browser = self.browser_node
        master = browser.GetMasterSequenceNode() if browser is not None else None
        proxy = browser.GetProxyNode(master) if master is not None else None
        if proxy is None or not proxy.IsA("vtkMRMLVectorVolumeNode"):
            return None
        if self.input_node is not None and self.input_node.GetID() != proxy.GetID():
            return None
        return browser

    @property
    def reference_volume(self) -> Any:
        """The volume whose grid an export uses: the input, else the sequence browser's proxy."""
        if self.input_node is not None:
            return self.input_node
        browser = self.browser_node
        master = browser.GetMasterSequenceNode() if browser is not None else None
        return browser.GetProxyNode(master) if master is not None else None


def available_actions(request: Request) -> set[str]:
    """The actions (and ``undo``/``export``) that ``request``'s nodes allow: the buttons to enable."""
    volume = request.input_node
    has_volume = volume is not None
    rgb = has_volume and volume.IsA("vtkMRMLVectorVolumeNode")
    scalar = has_volume and not rgb
    output = request.segmentation_node is not None
    allowed = {
        "segment": bool(request.rois) and has_volume,
        "refine": bool(request.rois) and has_volume,
        "propagate": bool(request.rois) and scalar,
        "track": bool(request.rois) and request.browser_node is not None,
        "clicks": has_volume,
        "candidate": has_volume,
        "propagate-clicks": scalar or request.video_browser is not None,
        "start-from-segment": scalar and output,
        "undo": output,
        "export": output and request.reference_volume is not None,
    }
    return {name for name, ok in allowed.items() if ok}


@dataclass
class RunContext:
    """How one operation runs.

    ``worker`` runs the model work (an object with ``submit(fn) -> Future``, e.g. the engine's
    :class:`~polypsam.background.EngineWorker`); ``None`` runs it on the calling thread.
    ``progress(done, total, message)`` is called from the thread doing the work (a
    :class:`~polypsam.background.ProgressRelay` hands it to another thread). ``cancel`` stops the
    work at the next slice or frame; nothing is written then.
    """

    worker: Any = None
    progress: ProgressFn = noop_progress
    cancel: CancelToken = field(default_factory=CancelToken)


@dataclass
class Result:
    """What one run wrote (segment ids by name), a one-line summary, and what comes next.

    ``candidates[k] = (masks, scores)`` are SAM2's three candidates on slice ``k`` and
    ``chosen[k]`` the one written; ``propagation``/``tracking`` is the propagation of a volume or
    a video that a later click continues from (only the directions it changes run again).
    """

    action: str = ""
    segment_ids: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    segment: str = ""
    candidates: dict[int, tuple[list[Any], list[float]]] = field(default_factory=dict)
    chosen: dict[int, int] = field(default_factory=dict)
    propagation: Any = None  # polypsam.propagation.PropagationResult
    tracking: Any = None  # polypsam.propagation.TrackResult
    key_frame: int = -1


@dataclass
class Plan:
    """An operation whose scene reads are done.

    ``compute()`` runs the model on plain values (no MRML, no VTK: it may run on a worker
    thread); ``writes(out)`` turns its output into typed writes (:mod:`.writer`) on the calling
    thread; ``report(out, written)`` describes the run. ``reference`` is the grid region writes
    are on, ``source`` its voxels (for the Segment Editor's intensity range; ``None`` for RGB),
    ``provenance`` the tags every write gets (the engine's provenance).
    """

    compute: Callable[[], Any]
    writes: Callable[[Any], list]
    report: Callable[[Any, Any], Result]
    reference: Any = None
    source: Any = None
    provenance: dict = field(default_factory=dict)


def check_cancel(cancel: Optional[CancelToken]) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def require_input(node: Any) -> Any:
    if node is None:
        raise InvalidInputError("no input image selected")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidInputError(f"'{node.GetName()}' is a label map; choose an image as input")
    return node


def require_output(node: Any) -> Any:
    """The output segmentation, with display nodes: one made by a selector's "Create new" has
    none, and its segments would not show."""
    if node is None:
        raise InvalidInputError("no output segmentation selected")
    node.CreateDefaultDisplayNodes()
    return node


def require_rois(rois: Sequence[Any]) -> list[Any]:
    rois = [r for r in rois if r is not None]
    if not rois:
        raise InvalidInputError("no box: add a box ROI (Add box) and check it in the list")
    return rois


def require_segment(segment: str) -> str:
    if not segment:
        raise InvalidInputError("no segment name given for the clicks")
    return segment
