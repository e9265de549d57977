"""Batch manifests: a CSV file, one case per row, parsed and checked into :class:`Case` objects.

Columns (header row required; ``input`` and ``boxes`` or ``points`` are mandatory, order is free):

``case_id``    name of the case's output folder (letters, digits, ``._-``; default: the input's
               file name without suffix, made unique with ``-2``, ``-3``...)
``input``      a PNG/JPEG frame, a NIfTI/NRRD/MHA volume or DICOM file/series folder, a folder of
               PNG/JPEG frames or a video file; relative paths start at the manifest's folder
``task``       ``segment`` | ``propagate`` | ``track``, or empty: a frame image is segmented, a
               volume propagated (segmented when it has one slice), frames/videos tracked
``boxes``      one or more boxes ``X0 Y0 X1 Y1`` (pixels, inclusive; x = column/I, y = row/J)
               separated by ``;`` (labels 1..N in that order); numbers split by spaces or commas
``points``     include clicks ``X Y`` (pixels) separated by ``;`` on the key slice/frame, for ONE
               object: they go with the single box or make the object alone (several boxes
               with points are refused, as in the CLI); ``negative_points``: exclude clicks
``slice_points`` propagate: include clicks ``K X Y`` on other slices K (each a conditioning slice
               of the tracker, as ``--slice-point``); ``slice_negative_points``: exclude clicks
``frame_points`` track: ``I X Y`` on other frames I, as ``--frame-point``;
               ``frame_negative_points``: exclude clicks
``key_slice``  volumes: the slice K the boxes are drawn on (propagate: default the middle of
               ``slices``; segment: required unless the volume has one slice)
``slices``     propagate: the slice range ``K0 K1`` (inclusive; default all slices)
``frame``      track: the frame index the boxes are drawn on (0-based, natural order; default 0)
``reference``  optional reference mask (image, labelmap or folder of frame masks) for
               ``--evaluate``
``window``     optional intensity for scalar images, as ``--window`` (overrides it for the row)

Other columns (notes, patient id...) are kept as they are: in each case's ``case.json`` and in
``summary.csv``; they do not decide the outputs. A column whose name is close to a known one
(``key_slcie``) is refused as a likely typo, naming the known column.

A row that cannot be used (missing file, unknown task, bad numbers, options that do not fit the
input, several boxes with points) becomes a :class:`RowError` naming the row and the problem; the
other rows still run. Boxes and points are checked against the image size when the case runs (the
file is read there): one outside fails that case only.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InvalidInputError
from ..geometry import Box, as_boxes

COLUMNS = ("case_id", "input", "task", "boxes", "points", "negative_points", "slice_points",
           "slice_negative_points", "frame_points", "frame_negative_points", "key_slice", "slices",
           "frame", "reference", "window")
OTHER_POINTS = {"volume": ("slice_points", "slice_negative_points"),
                "frames": ("frame_points", "frame_negative_points")}
TASKS = ("segment", "propagate", "track")
KINDS = ("image", "volume", "frames")
RESERVED_IDS = ("summary.csv", "failures.csv", "batch.log", "metrics.csv", "metrics.png")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Case:
    """One checked manifest row: what to run on which input (paths absolute)."""

    case_id: str
    row: int  # 1-based line number in the CSV file (header = line 1)
    input: Path
    kind: str  # image | volume | frames
    task: str  # segment | propagate | track | "" (volume: decided once its slices are known)
    boxes: tuple[Box, ...]
    points: tuple[tuple[float, float], ...] = ()  # include clicks on the key slice/frame
    negative_points: tuple[tuple[float, float], ...] = ()
    other_points: tuple[tuple[int, float, float, int], ...] = ()  # (slice/frame, x, y, label)
    key_slice: int | None = None
    slices: tuple[int, int] | None = None
    frame: int | None = None
    reference: Path | None = None
    window: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # the row's other columns, kept as they are

    def prompts(self) -> dict:
        """The prompts as JSON-ready values (recorded in the case's JSON)."""
        out: dict = {"boxes": [b.to_list() for b in self.boxes]}
        # clicks only when given: rows without them keep the fingerprints of older versions
        for name in ("points", "negative_points"):
            if getattr(self, name):
                out[name] = [list(p) for p in getattr(self, name)]
        if self.other_points:
            pos, neg = OTHER_POINTS["volume" if self.kind == "volume" else "frames"]
            for name, label in ((pos, 1), (neg, 0)):
                values = [[n, x, y] for n, x, y, lab in self.other_points if lab == label]
                if values:
                    out[name] = values
        for name in ("key_slice", "slices", "frame"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def point_labels(self) -> tuple[int, ...]:
        """Labels of ``points + negative_points`` (1 include, 0 exclude)."""
        return (1,) * len(self.points) + (0,) * len(self.negative_points)

    def object_prompts(self, width: int | None = None, height: int | None = None) -> list:
        """The objects' :class:`~polypsam.engine.Prompt` list (checked on a ``width`` x ``height``
        image when given), by the CLI's rule :func:`polypsam.engine.object_prompts`."""
        from ..engine import object_prompts

        return object_prompts(self.boxes, self.points + self.negative_points, self.point_labels,
                              None, width, height, other_clicks=bool(self.other_points),
                              boxes_name="boxes", advice="one row per object")

    def refinements(self, count: int) -> list:
        """Clicks on other slices/frames as :class:`~polypsam.engine.FramePrompt` (object 1)."""
        from ..engine import frame_clicks

        return frame_clicks(self.other_points, count, "slice" if self.kind == "volume" else "frame")

    def describe(self) -> dict:
        """Everything that decides this case's outputs, as JSON-ready values."""
        return {"case_id": self.case_id, "input": str(self.input), "kind": self.kind,
                "task": self.task, "prompts": self.prompts(), "window": self.window,
                "reference": str(self.reference) if self.reference else None}


@dataclass(frozen=True)
class RowError:
    """A manifest row that cannot run, with the reason."""

    row: int
    case_id: str
    input: str
    message: str
    extra: tuple[tuple[str, str], ...] = ()


@dataclass
class Manifest:
    path: Path
    cases: list[Case] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)  # columns kept as they are

    @property
    def rows(self) -> int:
        return len(self.cases) + len(self.errors)


def parse_boxes(text: str) -> list[Box]:
    """``"x0 y0 x1 y1; x0 y0 x1 y1"`` as boxes (coordinates not yet checked against an image)."""
    parts = [p for p in (text or "").split(";") if p.strip()]
    if not parts:
        raise InvalidInputError("no box given: the boxes column needs X0 Y0 X1 Y1 (';' between)")
    return as_boxes([_numbers(p, "box", float) for p in parts])


def parse_points(text: str, what: str, size: int = 2) -> list[tuple[float, ...]]:
    """``"x y; x y"`` (``size`` 3: ``"k x y; ..."``) as tuples of floats; empty text: none."""
    out = []
    for part in (p for p in (text or "").split(";") if p.strip()):
        values = _numbers(part, what, float)
        if len(values) != size:
            form = "X Y" if size == 2 else "K X Y"
            raise InvalidInputError(f"{what} {part.strip()!r} must be {form} (';' between clicks)")
        out.append(tuple(values))
    return out


def _numbers(text: str, what: str, kind=int) -> list:
    items = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    try:
        return [kind(t) for t in items]
    except ValueError as exc:
        raise InvalidInputError(f"{what} {text.strip()!r} must be {kind.__name__} numbers") from exc


def _index(value: float, what: str) -> int:
    if value != int(value):
        raise InvalidInputError(f"{what}: the slice/frame {value:g} must be an integer")
    return int(value)


def _one_int(text: str, what: str) -> int | None:
    if not text.strip():
        return None
    values = _numbers(text, what)
    if len(values) != 1:
        raise InvalidInputError(f"{what} {text.strip()!r} must be one integer")
    return values[0]


def input_kind(path: Path) -> str:
    """``image``, ``volume`` or ``frames`` for an existing input path."""
    from .. import io
    from ..frames import VIDEO_SUFFIXES

    if path.is_dir():
        has_frames = any(io.is_image_file(p) for p in path.iterdir())
        return "frames" if has_frames else "volume"
    if io.is_image_file(path):
        return "image"
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "frames"
    if io.full_suffix(path) in io.VOLUME_SUFFIXES:
        return "volume"
    raise InvalidInputError(
        f"input {path.name} is not a PNG/JPEG frame, a volume ({', '.join(io.VOLUME_SUFFIXES)}),"
        " a DICOM or frame folder, or a video"
    )


def _resolve(base: Path, text: str, what: str) -> Path:
    path = Path(text.strip()).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise InvalidInputError(f"{what} not found: {path}")
    return path.resolve()


def _task_for(kind: str, task: str, row: dict) -> str:
    if task and task not in TASKS:
        raise InvalidInputError(f"unknown task {task!r}: use one of {', '.join(TASKS)} or leave it"
                                " empty")
    fits = {"image": ("segment",), "volume": ("segment", "propagate"), "frames": ("track",)}
    what = {"image": "an image", "volume": "a volume", "frames": "a frame folder or video"}[kind]
    if task and task not in fits[kind]:
        raise InvalidInputError(f"task {task} does not apply to {what} (use"
                                f" {' or '.join(fits[kind])})")
    if kind != "volume" and (row["key_slice"] or row["slices"]):
        raise InvalidInputError(f"key_slice/slices apply to volumes, not to {what}")
    if kind != "frames" and row["frame"]:
        raise InvalidInputError(f"frame applies to frame folders and videos, not to {what}")
    for other, columns in OTHER_POINTS.items():
        given = [c for c in columns if row[c]]
        if given and kind != other:
            where = "volumes" if other == "volume" else "frame folders and videos"
            raise InvalidInputError(f"{given[0]} applies to {where}, not to {what}")
    if task == "segment" and row["slices"]:
        raise InvalidInputError("slices applies to propagate; segment takes one key_slice")
    if task == "segment" and (row["slice_points"] or row["slice_negative_points"]):
        raise InvalidInputError("slice_points apply to propagate; segment takes one key_slice")
    if kind == "image":
        return "segment"
    if kind == "frames":
        return "track"
    others = row["slices"] or row["slice_points"] or row["slice_negative_points"]
    return task or ("propagate" if others else "")


def parse_row(row: dict, line: int, base: Path) -> Case:
    """One CSV row (a dict of stripped strings) as a :class:`Case`; raises InvalidInputError."""
    if not row["input"]:
        raise InvalidInputError("the input column is empty")
    path = _resolve(base, row["input"], "input")
    kind = input_kind(path)
    task = _task_for(kind, row["task"].lower(), row)
    boxes = tuple(parse_boxes(row["boxes"])) if row["boxes"] else ()
    points = tuple(parse_points(row["points"], "points"))
    negative = tuple(parse_points(row["negative_points"], "negative_points"))
    other = ()
    if kind in OTHER_POINTS:
        pos, neg = OTHER_POINTS[kind]
        other = tuple((_index(n, pos), x, y, 1) for n, x, y in parse_points(row[pos], pos, 3)) + \
            tuple((_index(n, neg), x, y, 0) for n, x, y in parse_points(row[neg], neg, 3))
    if not boxes and not points and not negative:
        raise InvalidInputError("no prompt: give boxes (X0 Y0 X1 Y1, ';' between) and/or points"
                                " (X Y, ';' between)")
    slices = None
    if row["slices"]:
        values = _numbers(row["slices"], "slices")
        if len(values) != 2 or values[0] > values[1] or values[0] < 0:
            raise InvalidInputError(f"slices {row['slices']!r} must be two integers 0 <= K0 <= K1")
        slices = (values[0], values[1])
    key = _one_int(row["key_slice"], "key_slice")
    if key is not None and slices is not None and not slices[0] <= key <= slices[1]:
        raise InvalidInputError(f"key_slice {key} lies outside slices {slices[0]}..{slices[1]}")
    if row["window"]:
        from ..preprocess import parse_intensity

        parse_intensity(row["window"])
    reference = _resolve(base, row["reference"], "reference") if row["reference"] else None
    case_id = row["case_id"] or _default_id(path)
    check_case_id(case_id)
    case = Case(case_id=case_id, row=line, input=path, kind=kind, task=task, boxes=boxes,
                points=points, negative_points=negative, other_points=other, key_slice=key,
                slices=slices, frame=_one_int(row["frame"], "frame"),
                reference=reference, window=row["window"])
    case.object_prompts()  # the box/points rule now, so a bad row is reported before any run
    return case


def check_case_id(case_id: str) -> str:
    if not _CASE_ID.match(case_id):
        raise InvalidInputError(
            f"case_id {case_id!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a"
            " letter or digit (it names the case's output folder)"
        )
    if case_id.lower() in RESERVED_IDS:
        raise InvalidInputError(f"case_id {case_id!r} is the name of a batch output file")
    return case_id


def _default_id(path: Path) -> str:
    from ..io import full_suffix

    stem = path.name[: len(path.name) - len(full_suffix(path))] if path.is_file() else path.name
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-") or "case"
    return clean[:120]


def read_manifest(path: str | Path) -> Manifest:
    """Parse a manifest CSV; unusable rows become :class:`RowError` entries, not exceptions.

    Raises :class:`InvalidInputError` only when the file itself is unusable (missing, no header,
    no ``input`` column, neither ``boxes`` nor ``points``, unknown columns).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"manifest not found: {path}")
    base = path.resolve().parent
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        names = [(h or "").strip() for h in (reader.fieldnames or [])]
        header = [h.lower() for h in names]
        if not header:
            raise InvalidInputError(f"manifest {path} is empty: it needs a header row")
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:
            raise InvalidInputError(f"manifest {path.name}: column(s) {', '.join(twice)} appear"
                                    " twice in the header row")
        # other columns keep their names as written; unnamed ones (a trailing comma) are dropped
        extra = {h: name for h, name in zip(header, names) if h and h not in COLUMNS}
        check_extra_columns(path, list(extra))
        if "input" not in header:
            raise InvalidInputError(f"manifest {path.name} needs the column input")
        if "boxes" not in header and "points" not in header:
            raise InvalidInputError(f"manifest {path.name} needs a boxes or points column")
        reader.fieldnames = header
        manifest = Manifest(path=path.resolve(), extra_columns=list(extra.values()))
        seen: dict[str, int] = {}
        for raw in reader:
            line = reader.line_num
            row = {c: (raw.get(c) or "").strip() for c in COLUMNS}
            kept = tuple((name, (raw.get(h) or "").strip()) for h, name in extra.items())
            if not any(row.values()) and not any(v for _, v in kept):
                continue
            try:
                case = replace(parse_row(row, line, base), extra=kept)
                if case.case_id in seen:
                    if row["case_id"]:
                        raise InvalidInputError(f"case_id {case.case_id} is also used on line"
                                                f" {seen[case.case_id]}")
                    case = _renamed(case, seen)
                seen[case.case_id] = line
                manifest.cases.append(case)
            except InvalidInputError as exc:
                manifest.errors.append(RowError(line, row["case_id"], row["input"], str(exc),
                                                kept))
    if not manifest.cases and not manifest.errors:
        raise InvalidInputError(f"manifest {path} has no rows")
    return manifest


def check_extra_columns(path: Path, extra: list[str]) -> None:
    """Refuse a column named like a known one (a typo that would silently drop its values);
    others are kept as they are."""
    import difflib

    for name in extra:
        close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.8)
        if close:
            raise InvalidInputError(f"manifest {path.name}: unknown column {name!r}: did you mean"
                                    f" {close[0]}? (other extra columns are kept as they are)")


def _renamed(case: Case, seen: dict[str, int]) -> Case:
    n = 2
    while f"{case.case_id}-{n}" in seen:
        n += 1
    return replace(case, case_id=f"{case.case_id}-{n}")
