"""The one engine factory: settings → an object implementing :class:`polypsam.engine.Engine`.

The CLI, the Slicer module, the server and the benchmarks build engines only here, so a new
engine kind is one more branch in :func:`create_engine`. Weights are never fetched silently:
:func:`weights_to_download` tells a GUI which registry checkpoint is missing so it can ask first,
then :func:`create_engine` is called with ``allow_download=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import InvalidInputError
from .sam2_adapter.precision import PRECISIONS  # noqa: F401 - the choices of precision (no torch)

ENGINE_KINDS = {
    "in-process": "SAM2 in this Python process (CPU, CUDA or MPS)",
    "server": "a PolypSAM server ('polypsam serve') at a URL; needs no torch here",
}
DEFAULT_MODEL = "sam2.1_hiera_tiny"


@dataclass(frozen=True)
class EngineSettings:
    """What to build. ``image_size=0`` keeps the checkpoint's own size.

    ``model`` is a registry name; ``checkpoint`` a custom ``.pt`` in SAM2's official layout whose
    config is ``config``, else the config of ``model`` (a GUI's architecture choice).
    ``kind="server"`` uses ``server_url`` and ``token`` only (the model is the server's).
    ``precision`` is what SAM2's forward calls run at: ``auto`` (bfloat16 autocast on a CUDA GPU
    that supports it, else float32), ``fp32`` or ``bf16``; ``encoder_batch`` the frames tracking
    encodes together (0: automatic, 1 on a CPU).
    """

    kind: str = "in-process"
    model: str = DEFAULT_MODEL
    checkpoint: str = ""
    config: str = ""
    device: str = "auto"
    image_size: int = 0
    server_url: str = ""
    token: str = field(default="", repr=False)
    precision: str = "auto"
    encoder_batch: int = 0

    def describe(self) -> str:
        if self.kind == "server":
            return f"server: {self.server_url}"
        weights = self.checkpoint or self.model
        size = self.image_size or "default"
        return (f"{self.kind}: {weights} on {self.device}, image size {size},"
                f" precision {self.precision}")


def settings_for(
    checkpoint: str | Path,
    config: str | None = None,
    *,
    device: str | None = "auto",
    image_size: int | None = None,
    precision: str = "auto",
) -> EngineSettings:
    """Settings from a registry name or a ``.pt`` path (the CLI's ``--checkpoint``).

    A custom file gets no fallback architecture: its config must be given (or come from a
    sidecar written by fine-tuning).
    """
    from .checkpoints import REGISTRY

    name = str(checkpoint)
    custom = name not in REGISTRY
    return EngineSettings(
        model="" if custom else name,
        checkpoint=name if custom else "",
        config=config or "",
        device=device or "auto",
        image_size=int(image_size or 0),
        precision=precision or "auto",
    )


def model_choices() -> list[tuple[str, str]]:
    """``(registry name, description)`` for a model combo box."""
    from .checkpoints import REGISTRY

    return [(name, spec.description or name) for name, spec in REGISTRY.items()]


def _resolve_args(settings: EngineSettings) -> tuple[str, Optional[str], Optional[int]]:
    """``(model argument, config, image size)`` for :func:`~polypsam.checkpoints.resolve_checkpoint`.

    For a custom checkpoint, a config or image size not given explicitly comes from its
    fine-tuning sidecar (``OUT.pt.json``), then (config only) from the registry model chosen.
    """
    from .checkpoints import REGISTRY, read_checkpoint_sidecar

    settings = _model_path_as_checkpoint(settings)
    if settings.checkpoint:
        path = Path(settings.checkpoint).expanduser()
        sidecar = read_checkpoint_sidecar(path) if not (settings.config and settings.image_size) else {}
        config = (settings.config or sidecar.get("config")
                  or (REGISTRY[settings.model].config if settings.model in REGISTRY else ""))
        size = settings.image_size or int(sidecar.get("image_size") or 0)
        return str(path), config or None, size or None
    if settings.model not in REGISTRY:
        names = ", ".join(REGISTRY)
        raise InvalidInputError(f"unknown model {settings.model!r}: use one of {names}, or give a"
                                " checkpoint file as checkpoint='path/to/file.pt'")
    return settings.model, settings.config or None, settings.image_size or None


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _model_path_as_checkpoint(settings: EngineSettings) -> EngineSettings:
    """``model="x.pt"`` (a file, not a registry name) means ``checkpoint="x.pt"``."""
    from dataclasses import replace

    from .checkpoints import REGISTRY

    name = settings.model
    if settings.checkpoint or name in REGISTRY or not (
            Path(name).suffix.lower() in CHECKPOINT_SUFFIXES or Path(name).expanduser().is_file()):
        return settings
    return replace(settings, model="", checkpoint=name)


def weights_to_download(settings: EngineSettings):
    """The registry :class:`~polypsam.checkpoints.ModelSpec` whose file is not cached, or ``None``."""
    from .checkpoints import REGISTRY, cache_dir

    if settings.checkpoint or settings.kind != "in-process":
        return None
    spec = REGISTRY.get(settings.model)
    if spec is None or (cache_dir() / spec.filename).is_file():
        return None
    return spec


def create_engine(settings: EngineSettings, *, allow_download: bool = False):
    """Build the engine for ``settings`` (may take seconds: model construction, weights load)."""
    if settings.kind not in ENGINE_KINDS:
        raise InvalidInputError(
            f"unknown engine {settings.kind!r}: use one of {', '.join(ENGINE_KINDS)}"
        )
    if settings.kind == "server":
        from .server.client import ServerEngine

        return ServerEngine(settings.server_url, settings.token)
    from .sam2_adapter.engine import SAM2Engine

    resolved = checkpoint_for(settings, allow_download=allow_download)
    device = None if settings.device in ("", "auto") else settings.device
    return SAM2Engine(resolved, device=device, image_size=resolved.image_size,
                      precision=settings.precision, encoder_batch=settings.encoder_batch,
                      intensity=trained_intensity(settings))


def trained_intensity(settings: EngineSettings):
    """The intensity mapping a fine-tuned checkpoint's sidecar records (``None`` for registry
    weights, or a checkpoint trained on RGB only): engines apply it when a call gives none."""
    from .checkpoints import read_checkpoint_sidecar
    from .preprocess import parse_intensity

    if settings.kind != "in-process" or not settings.checkpoint:
        return None
    recorded = read_checkpoint_sidecar(Path(settings.checkpoint).expanduser()).get("intensity")
    mapping = recorded.get("mapping") if isinstance(recorded, dict) else None
    return parse_intensity(mapping) if mapping else None


def checkpoint_for(settings: EngineSettings, *, allow_download: bool = False):
    """The :class:`~polypsam.checkpoints.ResolvedCheckpoint` (file, config, size) ``settings`` name."""
    from .checkpoints import resolve_checkpoint

    model, config, image_size = _resolve_args(settings)
    return resolve_checkpoint(model, config=config, download=allow_download, image_size=image_size)


class EngineCache:
    """Keeps one engine alive while the settings stay the same (weights load once), with one
    persistent worker thread (:class:`~polypsam.background.EngineWorker`) that loads it and runs
    all of its model work."""

    def __init__(self) -> None:
        self._settings: Optional[EngineSettings] = None
        self._engine = None
        self._worker = None

    @property
    def engine(self):
        return self._engine

    @property
    def worker(self):
        """The engine's worker thread (started on first use)."""
        if self._worker is None:
            from .background import EngineWorker

            self._worker = EngineWorker()
        return self._worker

    def get(self, settings: EngineSettings, *, allow_download: bool = False,
            while_waiting=None):
        """The engine for ``settings``, built on the worker thread when they changed;
        ``while_waiting`` is called on this thread meanwhile (e.g. to repaint a GUI)."""
        if self._engine is not None and settings == self._settings:
            return self._engine
        self.close()
        self._engine = self.worker.run(
            lambda: create_engine(settings, allow_download=allow_download),
            while_waiting=while_waiting or (lambda: None))
        self._settings = settings
        return self._engine

    def close(self) -> None:
        """Release the engine and end its worker thread."""
        engine, worker = self._engine, self._worker
        self._engine = self._settings = self._worker = None
        try:
            if engine is not None:
                engine.close()
        finally:
            if worker is not None:
                worker.close()


def engine_for(
    checkpoint: str | Path,
    config: str | None = None,
    *,
    device: str | None = "auto",
    image_size: int | None = None,
    allow_download: bool = False,
    precision: str = "auto",
):
    """Shorthand: :func:`create_engine` for a registry name or ``.pt`` path (see :func:`settings_for`)."""
    return create_engine(settings_for(checkpoint, config, device=device, image_size=image_size,
                                      precision=precision),
                         allow_download=allow_download)
