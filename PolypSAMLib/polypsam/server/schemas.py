"""Request and response bodies of the server's JSON endpoints (pydantic; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SHA256 = Field(pattern=r"^[0-9a-f]{64}$", description="content hash of an uploaded array")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PackedMask(Strict):
    shape: list[int] = Field(min_length=2, max_length=2)
    bbox: Optional[list[int]] = Field(default=None, min_length=4, max_length=4,
                                      description="[y0, y1, x0, x1], end-exclusive")
    bits: str = Field(default="", description="base64 of zlib(np.packbits(bbox crop))")


class IntensityModel(Strict):
    kind: Literal["window", "percentile"]
    level: Optional[float] = None
    width: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None


class PromptModel(Strict):
    """One object's 2-D prompt: any of a box, include/exclude points and a mask."""

    box: Optional[list[float]] = Field(default=None, min_length=4, max_length=4)
    points: list[list[float]] = Field(default=[], max_length=1024, description="[[x, y], ...]")
    labels: list[int] = Field(default=[], max_length=1024, description="1 include, 0 exclude")
    mask: Optional[PackedMask] = None


class SegmentRequest(Strict):
    image: str = SHA256
    prompts: Optional[list[PromptModel]] = Field(default=None, max_length=256)
    boxes: list[list[float]] = Field(default=[], max_length=256,
                                     description="[x0, y0, x1, y1] per object (API 1.0)")
    multimask: bool = False
    intensity: Optional[IntensityModel] = None


class PromptOut(BaseModel):
    box: Optional[list[float]] = None
    points: list[list[float]] = []
    labels: list[int] = []
    has_mask: bool = False


class MaskOut(Strict):
    mask: PackedMask
    score: float
    box: Optional[list[float]] = None
    prompt: Optional[PromptOut] = None
    candidates: list[PackedMask] = []
    candidate_scores: list[float] = []
    shape: Optional[list[int]] = None


class SegmentResponse(Strict):
    results: list[MaskOut]


class Chunk(Strict):
    start: int = Field(ge=0, description="index of the chunk's first frame in the sequence")
    array: str = SHA256


class FramesRef(Strict):
    length: int = Field(ge=1, le=1_000_000, description="number of frames of the whole sequence")
    chunks: list[Chunk] = Field(min_length=1, max_length=100_000)


class FramePromptModel(Strict):
    frame: int
    obj_id: int
    box: Optional[list[float]] = Field(default=None, min_length=4, max_length=4)
    points: Optional[list[list[float]]] = None
    labels: Optional[list[int]] = None
    mask: Optional[PackedMask] = None


class TrackRequest(Strict):
    job: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                               description="client-chosen id to cancel the job with")
    frames: FramesRef
    prompts: list[FramePromptModel] = Field(min_length=1, max_length=1024)
    start_frame: int
    reverse: bool = False
    max_frames: Optional[int] = None
    intensity: Optional[IntensityModel] = None


class PrefetchRequest(Strict):
    job: Optional[str] = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                               description="client-chosen id to cancel the prefetch with")
    image: str = SHA256
    intensity: Optional[IntensityModel] = None


class PrefetchOut(Strict):
    job: str
    state: Literal["done", "cached", "cancelled"]


class SessionOut(Strict):
    session: str


class UploadOut(Strict):
    array: str
    nbytes: int


class CancelOut(Strict):
    cancelled: bool


class ErrorBody(BaseModel):
    code: str
    message: str
    missing: list[str] = []


class ErrorOut(BaseModel):
    error: ErrorBody
