"""Build a SAM2 model from a config and an official-format checkpoint, without global Hydra state.

``sam2.build_sam.build_sam2`` composes configs through Hydra's global instance, which rejects
absolute config paths and clashes with any other Hydra user (sam2 #58, #573, #721). PolypSAM
loads the YAML with OmegaConf and instantiates it with ``hydra.utils.instantiate`` (the same
objects ``build_sam2`` makes), then loads the checkpoint with ``weights_only=True``.

One model object (a ``SAM2VideoPredictor``, which is a ``SAM2Base``) serves both the image
predictor and video propagation, so weights are in memory once.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import CheckpointError, DeviceError, InvalidInputError

# The same post-processing settings ``build_sam2_video_predictor`` applies by default.
_VIDEO_POSTPROCESSING = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}

VALID_IMAGE_SIZES = (256, 512, 768, 1024)


def resolve_config_path(config: str) -> Path:
    """Path of a SAM2 YAML config: a file, a package-relative name or a short stem.

    Accepted: ``/path/to/custom.yaml``, ``configs/sam2.1/sam2.1_hiera_t.yaml`` and
    ``sam2.1_hiera_t`` (searched among the configs shipped inside the ``sam2`` package).
    """
    candidate = Path(config).expanduser()
    if candidate.is_file():
        return candidate
    root = importlib.resources.files("sam2")
    packaged = root.joinpath(config)
    if packaged.is_file():
        return Path(str(packaged))
    stem = Path(config).name.removesuffix(".yaml")
    for sub in ("configs/sam2.1", "configs/sam2"):
        hit = root.joinpath(sub, stem + ".yaml")
        if hit.is_file():
            return Path(str(hit))
    raise InvalidInputError(
        f"SAM2 config {config!r} not found: give a YAML file path or a config shipped with sam2"
        " such as 'configs/sam2.1/sam2.1_hiera_t.yaml'"
    )


def select_device(device: str | None = None):
    """Return a ``torch.device``: ``None``/``"auto"`` picks cuda, then mps, then cpu."""
    import torch

    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {device!r} requested but MPS is not available here")
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def load_model_config(config: str, image_size: int | None = None):
    """Load a SAM2 config as an OmegaConf object with video post-processing and image size."""
    from omegaconf import OmegaConf

    path = resolve_config_path(config)
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # YAML errors come in many types
        raise InvalidInputError(f"SAM2 config {path} could not be read: {exc}") from exc
    if "model" not in cfg:
        raise InvalidInputError(f"{path} is not a SAM2 model config (no 'model' section)")
    for key, value in _VIDEO_POSTPROCESSING.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    if image_size is not None:
        if image_size not in VALID_IMAGE_SIZES:
            raise InvalidInputError(
                f"image size {image_size} not supported: use one of {VALID_IMAGE_SIZES}"
            )
        feat = image_size // 16
        OmegaConf.update(cfg, "model.image_size", image_size, force_add=True)
        for attn in ("self_attention", "cross_attention"):
            OmegaConf.update(
                cfg, f"model.memory_attention.layer.{attn}.feat_sizes", [feat, feat], force_add=True
            )
    OmegaConf.resolve(cfg)
    return cfg


def build_model(config: str, checkpoint: str | Path | None, device=None, image_size: int | None = None):
    """Instantiate SAM2 from ``config`` and load ``checkpoint`` (official ``{"model": ...}`` format).

    ``checkpoint=None`` leaves random weights (used to write test checkpoints).
    Raises :class:`CheckpointError` for a missing, corrupt or mismatching checkpoint.
    """
    from hydra.utils import instantiate

    dev = select_device(device) if not hasattr(device, "type") else device
    cfg = load_model_config(config, image_size)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint_into(model, Path(checkpoint), config)
    model = model.to(dev)
    model.eval()
    return model


def load_checkpoint_into(model, checkpoint: Path, config: str) -> None:
    """Load an official-format checkpoint with ``weights_only=True`` and a strict key check."""
    import torch

    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint file not found: {checkpoint}")
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint} could not be read (corrupt, truncated or not a PyTorch"
            f" weights file): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(
            f"checkpoint {checkpoint} is not in the official SAM2 format (a dict with a 'model'"
            " state dict)"
        )
    try:
        result = model.load_state_dict(payload["model"], strict=False)
    except RuntimeError as exc:  # tensor shape mismatches
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), "")
        raise CheckpointError(
            f"checkpoint {checkpoint.name} does not match config {config}: {first or exc}"
        ) from exc
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3])
        unexpected = ", ".join(result.unexpected_keys[:3])
        raise CheckpointError(
            f"checkpoint {checkpoint.name} does not match config {config}:"
            f" {len(result.missing_keys)} missing keys ({missing}),"
            f" {len(result.unexpected_keys)} unexpected keys ({unexpected})"
        )


def save_checkpoint(model, path: str | Path) -> Path:
    """Save ``model`` in the official SAM2 checkpoint layout ``{"model": state_dict}``.

    Written to a temporary name in the same folder, then renamed: a reader (or a second writer,
    e.g. two benchmark processes starting at once) never sees a half-written file.
    """
    import os
    import tempfile

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({"model": model.state_dict()}, stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
