"""The engine factory the settings panel calls (no Qt, no ``slicer``).

The module's logic never builds SAM2: it receives an object implementing
:class:`polypsam.engine.Engine`. This file is the one place that turns the settings panel's
choices into such an engine, so a later engine kind (a local GPU server client) is one more
branch in :func:`create_engine` plus a choice in the settings panel, nothing else.

Weights are never fetched silently: :func:`weights_to_download` tells the caller which registry
checkpoint is missing from the user cache so it can ask for consent, and only then is
:func:`create_engine` called with ``allow_download=True`` (download into the user cache through
:mod:`polypsam.checkpoints` / :mod:`polypsam.download`, SHA256-checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENGINE_KINDS = {"in-process": "SAM2 in Slicer's Python (CPU, CUDA or MPS)"}
DEFAULT_MODEL = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class EngineSettings:
    """What the settings panel chose. ``image_size=0`` keeps the checkpoint's own size."""

    kind: str = "in-process"
    model: str = DEFAULT_MODEL
    checkpoint: str = ""  # a custom .pt file (architecture = ``model``'s config) or empty
    config: str = ""  # overrides the config of ``model`` (a YAML path or a sam2 config name)
    device: str = "auto"
    image_size: int = 0

    def describe(self) -> str:
        weights = self.checkpoint or self.model
        size = self.image_size or "default"
        return f"{self.kind}: {weights} on {self.device}, image size {size}"


def model_choices() -> list[tuple[str, str]]:
    """``(registry name, description)`` for the model combo box."""
    from polypsam.checkpoints import REGISTRY

    return [(name, spec.description or name) for name, spec in REGISTRY.items()]


def _resolve_args(settings: EngineSettings) -> tuple[str, Optional[str]]:
    """``(model argument, config)`` for :func:`polypsam.checkpoints.resolve_checkpoint`."""
    from polypsam.checkpoints import REGISTRY
    from polypsam.errors import InvalidInputError

    if settings.checkpoint:
        config = settings.config or (REGISTRY[settings.model].config if settings.model in REGISTRY else "")
        if not config:
            raise InvalidInputError(
                f"custom checkpoint {Path(settings.checkpoint).name} needs a config: choose the"
                " model architecture it was trained from"
            )
        return str(Path(settings.checkpoint).expanduser()), config
    if settings.model not in REGISTRY:
        names = ", ".join(REGISTRY)
        raise InvalidInputError(f"unknown model {settings.model!r}: use one of {names}")
    return settings.model, settings.config or None


def weights_to_download(settings: EngineSettings):
    """The registry :class:`~polypsam.checkpoints.ModelSpec` whose file is not cached, or ``None``."""
    from polypsam.checkpoints import REGISTRY, cache_dir

    if settings.checkpoint or settings.kind != "in-process":
        return None
    spec = REGISTRY.get(settings.model)
    if spec is None or (cache_dir() / spec.filename).is_file():
        return None
    return spec


def create_engine(settings: EngineSettings, *, allow_download: bool = False):
    """Build the engine for ``settings`` (may take seconds: model construction, weights load)."""
    from polypsam.checkpoints import resolve_checkpoint
    from polypsam.errors import InvalidInputError

    if settings.kind not in ENGINE_KINDS:
        raise InvalidInputError(
            f"unknown engine {settings.kind!r}: use one of {', '.join(ENGINE_KINDS)}"
        )
    model, config = _resolve_args(settings)
    resolved = resolve_checkpoint(model, config=config, download=allow_download,
                                  image_size=settings.image_size or None)
    from polypsam.sam2_engine import SAM2Engine

    device = None if settings.device in ("", "auto") else settings.device
    return SAM2Engine(resolved, device=device, image_size=settings.image_size or None)


class EngineCache:
    """Keeps one engine alive while the settings stay the same (weights load once)."""

    def __init__(self) -> None:
        self._settings: Optional[EngineSettings] = None
        self._engine = None

    @property
    def engine(self):
        return self._engine

    def get(self, settings: EngineSettings, *, allow_download: bool = False):
        if self._engine is not None and settings == self._settings:
            return self._engine
        self.close()
        self._engine = create_engine(settings, allow_download=allow_download)
        self._settings = settings
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            try:
                self._engine.close()
            finally:
                self._engine = None
                self._settings = None
