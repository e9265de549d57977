"""Provenance as flat text: one home for how boxes, points and ranges become tag strings.

Results carry a plain ``dict`` (engine info, prompts, key slice...) from the operation that made
them to wherever they are stored (segment tags in Slicer, export sidecars), so storage code never
imports the engine.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .geometry import Box
from .preprocess import Intensity


def box_tag(box: Box) -> str:
    """``"x0,y0,x1,y1"`` (shortest exact form of each number)."""
    return ",".join(f"{v:g}" for v in box.to_list())


def tag_value(value: Any) -> str:
    """One provenance value as text: boxes as :func:`box_tag`, lists of boxes joined by ``;``,
    other sequences comma-separated."""
    if isinstance(value, Box):
        return box_tag(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Box) for v in value):
        return ";".join(box_tag(v) for v in value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return ",".join(str(v) for v in np.asarray(value).ravel().tolist())
    return str(value)


def provenance_tags(*parts: Mapping[str, Any] | None) -> dict[str, str]:
    """Merge provenance mappings (later ones win) into ``{key: text}``."""
    tags: dict[str, str] = {}
    for part in parts:
        for key, value in (part or {}).items():
            tags[str(key)] = tag_value(value)
    return tags


def intensity_provenance(given: Intensity | None, given_as: str, trained: Intensity | None,
                         scalar: bool) -> tuple[Intensity | None, dict]:
    """The intensity a run applies to its input, and how provenance records it.

    ``given`` (e.g. ``--window``, named by ``given_as``) wins; else ``trained``, the mapping the
    checkpoint was fine-tuned with; else the default (percentiles). RGB inputs use none.
    """
    from .preprocess import describe_intensity, intensity_text

    if not scalar:
        return given, {"mapping": None, "source": "RGB input: used as it is"}
    if given is not None:
        used, source = given, given_as
    elif trained is not None:
        used, source = trained, "the checkpoint's fine-tuning intensity (its sidecar)"
    else:
        return None, {"mapping": None, "source": "default",
                      "description": describe_intensity(None)}
    return used, {"mapping": intensity_text(used), "source": source,
                  "description": describe_intensity(used)}
