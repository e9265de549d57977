"""Conditioning of a two-way pass: which prompts condition which frames, and which direction.

Used by :mod:`polypsam.propagation`. The key slice/frame is segmented in 2-D from each object's
:class:`~polypsam.engine.Prompt` (a mask alone is taken as it is); refinements on other frames
become conditioning masks (a mask) or SAM2 click prompts (a box and/or clicks). Each direction's
conditioning is fingerprinted, so a re-run with the previous result tracks only the directions
whose prompts changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .engine import Engine, FramePrompt, FrameSource, Prompt
from .errors import InvalidInputError
from .preprocess import Intensity

# Score given to a user-supplied mask prompt when merging overlaps (it beats any model output).
USER_MASK_SCORE = float("inf")
# Reported key-slice score of a mask taken as it is (SAM2's dummy IoU for a mask input).
MASK_PROMPT_IOU = 1.0
SIDES = ("backward", "forward")


@dataclass
class Conditioning:
    """Conditioning per frame and object: masks (with their merge scores) and SAM2 click prompts."""

    masks: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    scores: dict[int, dict[int, float]] = field(default_factory=dict)
    clicks: list[FramePrompt] = field(default_factory=list)

    def add(self, frame: int, obj: int, mask: np.ndarray, score: float) -> None:
        self.masks.setdefault(frame, {})[obj] = np.asarray(mask, dtype=bool)
        self.scores.setdefault(frame, {})[obj] = float(score)

    def frames(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.masks) | {p.frame for p in self.clicks}))

    def prompts(self, side: str, key: int) -> list[FramePrompt]:
        def on_side(frame: int) -> bool:
            return not ((side == "forward" and frame < key) or (side == "backward" and frame > key))

        out = []
        for frame in sorted(self.masks):
            if on_side(frame):
                for obj, mask in sorted(self.masks[frame].items()):
                    out.append(FramePrompt(frame=frame, obj_id=obj, mask=mask))
        out += [p for p in sorted(self.clicks, key=lambda p: (p.frame, p.obj_id)) if on_side(p.frame)]
        return out


def mask_only(prompt: Prompt) -> bool:
    return prompt.mask is not None and prompt.box is None and not prompt.points


def build_conditioning(
    engine: Engine,
    frames: FrameSource,
    key: int,
    prompts: list[Prompt],
    refinements: Sequence[FramePrompt],
    intensity: Intensity | None,
    shape: tuple[int, int],
    allowed: tuple[int, int],
) -> tuple[Conditioning, dict[int, float]]:
    n_obj = len(prompts)
    height, width = shape
    cond = Conditioning()
    key_scores: dict[int, float] = {}
    to_segment = [(label, p) for label, p in enumerate(prompts, start=1) if not mask_only(p)]
    if to_segment:
        results = engine.segment_2d(frames[key], [p for _, p in to_segment], intensity=intensity)
        for (label, _), res in zip(to_segment, results):
            cond.add(key, label, res.mask, res.score)
            key_scores[label] = float(res.score)
    for label, p in enumerate(prompts, start=1):
        if mask_only(p):  # an existing segment: conditioning as it is
            cond.add(key, label, p.mask, USER_MASK_SCORE)
            key_scores[label] = MASK_PROMPT_IOU
    for p in refinements:
        if not isinstance(p, FramePrompt):
            raise InvalidInputError(f"a refinement must be a FramePrompt, got {type(p).__name__}")
        if not 1 <= p.obj_id <= n_obj:
            raise InvalidInputError(
                f"refinement for object {p.obj_id}: objects are numbered 1..{n_obj} (prompt order)"
            )
        if not allowed[0] <= p.frame <= allowed[1]:
            raise InvalidInputError(
                f"refinement on slice/frame {p.frame} lies outside {allowed[0]}..{allowed[1]}"
            )
        if p.mask is not None and np.shape(p.mask) != shape:
            raise InvalidInputError(
                f"refinement mask on slice/frame {p.frame} has shape {np.shape(p.mask)};"
                f" slices are {height} x {width}"
            )
        p.validate(width, height)
        if p.has_clicks:
            if p.frame == key:
                raise InvalidInputError(
                    f"clicks/box for object {p.obj_id} on the key slice/frame {key}: give them in"
                    " that object's key prompt, not as a refinement"
                )
            cond.clicks.append(p)
        else:
            cond.add(p.frame, p.obj_id, p.mask, USER_MASK_SCORE)
    return cond, key_scores


def conditioning_digest(prompts: Sequence[FramePrompt], context: object) -> str:
    """A fingerprint of one direction's conditioning (prompts, masks and run parameters)."""
    h = hashlib.blake2b(repr(context).encode(), digest_size=16)
    for p in prompts:
        box = None if p.box is None else p.box.to_list()
        h.update(repr((p.frame, p.obj_id, box, p.points, p.labels)).encode())
        if p.mask is not None:
            h.update(np.packbits(np.asarray(p.mask, dtype=bool)).tobytes())
    return h.hexdigest()


def sides_to_run(
    directions: Iterable[str] | None, previous, digests: dict[str, str], key: int
) -> tuple[str, ...]:
    if directions is not None:
        wanted = tuple(directions)
        bad = [d for d in wanted if d not in SIDES]
        if bad:
            raise InvalidInputError(f"directions must be among {SIDES}, got {bad}")
        return tuple(d for d in SIDES if d in wanted)
    if previous is None or previous.key_slice != key:
        return SIDES
    return tuple(d for d in SIDES if previous.side_digests.get(d) != digests[d])


def affected_directions(key: int, frames: Iterable[int]) -> tuple[str, ...]:
    """The directions a new prompt on each of ``frames`` changes, for a key slice/frame ``key``."""
    frames = list(frames)
    out = set()
    for f in frames:
        if f <= key:
            out.add("backward")
        if f >= key:
            out.add("forward")
    return tuple(d for d in SIDES if d in out)
