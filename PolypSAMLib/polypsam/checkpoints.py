"""Checkpoint registry, user cache directory and SHA256 verification.

Registry names (``sam2.1_hiera_tiny`` ...) map to an official URL, a config shipped inside the
``sam2`` package and, where published, a SHA256. A custom ``.pt`` file needs an explicit config.
Files live in a user cache directory (``$POLYPSAM_CACHE_DIR`` or the platform's user cache dir),
never in the install folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, InvalidInputError


@dataclass(frozen=True)
class ModelSpec:
    """A known checkpoint: where it comes from and how to build the model for it."""

    name: str
    filename: str
    config: str
    url: str | None
    sha256: str | None
    image_size: int = 1024
    description: str = ""


_SAM21 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
# No SHA256 is published for the SAM2.1 and MedSAM2 files: their hash is pinned at first download
# (sha256-pins.txt in the cache directory) and verified on every later load.

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt", "configs/sam2.1/sam2.1_hiera_t.yaml",
                  _SAM21 + "sam2.1_hiera_tiny.pt", None, 1024, "SAM2.1 Hiera tiny (~156 MB)"),
        ModelSpec("sam2.1_hiera_small", "sam2.1_hiera_small.pt", "configs/sam2.1/sam2.1_hiera_s.yaml",
                  _SAM21 + "sam2.1_hiera_small.pt", None, 1024, "SAM2.1 Hiera small (~184 MB)"),
        ModelSpec("sam2.1_hiera_base_plus", "sam2.1_hiera_base_plus.pt",
                  "configs/sam2.1/sam2.1_hiera_b+.yaml", _SAM21 + "sam2.1_hiera_base_plus.pt", None,
                  1024, "SAM2.1 Hiera base+ (~323 MB)"),
        ModelSpec("sam2.1_hiera_large", "sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_l.yaml",
                  _SAM21 + "sam2.1_hiera_large.pt", None, 1024, "SAM2.1 Hiera large (~898 MB)"),
        # SAM2 (July 2024) with the SHA256 values published by SlicerSegmentWithSAM.
        ModelSpec("sam2_hiera_tiny", "sam2_hiera_tiny.pt", "configs/sam2/sam2_hiera_t.yaml",
                  _SAM2 + "sam2_hiera_tiny.pt",
                  "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 1024,
                  "SAM2 Hiera tiny (2024-07)"),
        ModelSpec("sam2_hiera_small", "sam2_hiera_small.pt", "configs/sam2/sam2_hiera_s.yaml",
                  _SAM2 + "sam2_hiera_small.pt",
                  "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", 1024,
                  "SAM2 Hiera small (2024-07)"),
        ModelSpec("sam2_hiera_base_plus", "sam2_hiera_base_plus.pt", "configs/sam2/sam2_hiera_b+.yaml",
                  _SAM2 + "sam2_hiera_base_plus.pt",
                  "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", 1024,
                  "SAM2 Hiera base+ (2024-07)"),
        ModelSpec("sam2_hiera_large", "sam2_hiera_large.pt", "configs/sam2/sam2_hiera_l.yaml",
                  _SAM2 + "sam2_hiera_large.pt",
                  "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 1024,
                  "SAM2 Hiera large (2024-07)"),
        ModelSpec("medsam2", "MedSAM2_latest.pt", "configs/sam2.1/sam2.1_hiera_t.yaml",
                  "https://huggingface.co/wanglab/MedSAM2/resolve/main/MedSAM2_latest.pt", None,
                  512, "MedSAM2 (Hiera tiny at 512, medical images; ~156 MB)"),
    )
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on disk that is ready to load."""

    model: str
    path: Path
    config: str
    sha256: str
    image_size: int


def cache_dir() -> Path:
    """Directory for downloaded checkpoints (``$POLYPSAM_CACHE_DIR`` overrides)."""
    env = os.environ.get("POLYPSAM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("polypsam")) / "checkpoints"
    except ImportError:  # pragma: no cover - platformdirs is a declared dependency
        return Path.home() / ".cache" / "polypsam" / "checkpoints"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(
    model: str,
    *,
    config: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ResolvedCheckpoint:
    """Find (and optionally download) the checkpoint for a registry name or a ``.pt`` path."""
    if model in REGISTRY:
        spec = REGISTRY[model]
        path = cache_dir() / spec.filename
        if not path.is_file():
            if not download:
                raise CheckpointError(
                    f"checkpoint {spec.filename} for {spec.name} is not in the cache; download it"
                    f" from {spec.url} and place it at {path}"
                )
            from .download import download_checkpoint

            # Check a re-download against the hash pinned at first download, before it lands.
            download_checkpoint(spec, path, sha256=spec.sha256 or _pinned_hash(spec.filename))
        digest = verify_checkpoint(spec, path)
        return ResolvedCheckpoint(spec.name, path, config or spec.config, digest,
                                  image_size or spec.image_size)
    path = Path(model).expanduser()
    if path.suffix != ".pt" and not path.exists():
        names = ", ".join(REGISTRY)
        raise InvalidInputError(f"unknown model {model!r}: use one of {names} or a .pt file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if config is None:
        raise InvalidInputError(f"custom checkpoint {path.name} needs a config (--config)")
    return ResolvedCheckpoint(path.stem, path, config, sha256_file(path), image_size or 1024)


#: ``format`` of a checkpoint sidecar (the one home of checkpoint sidecars is this module).
CHECKPOINT_SIDECAR_FORMAT = "polypsam-finetune-v1"


def checkpoint_sidecar_path(checkpoint: str | Path) -> Path:
    """The JSON sidecar beside a checkpoint: ``OUT.pt`` → ``OUT.pt.json``."""
    path = Path(checkpoint)
    return path.with_name(path.name + ".json")


def write_checkpoint_sidecar(checkpoint: str | Path, info: dict) -> Path:
    """Write ``info`` as the sidecar of ``checkpoint`` (atomically: a reader never sees half)."""
    path = checkpoint_sidecar_path(checkpoint)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": CHECKPOINT_SIDECAR_FORMAT, **info}, indent=1),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_checkpoint_sidecar(checkpoint: str | Path) -> dict:
    """The sidecar of ``checkpoint`` as a dict (``{}`` when there is none).

    Fine-tuning writes it (:mod:`polypsam.finetune.runner`): it records the ``config`` and
    ``image_size`` the checkpoint was trained with, so they need not be repeated when it is loaded.
    """
    path = checkpoint_sidecar_path(Path(checkpoint).expanduser())
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {path} could not be read: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint sidecar {path} is not a JSON object")
    return data


def verify_checkpoint(spec: ModelSpec, path: Path) -> str:
    """Check ``path`` against the spec's SHA256 (or the hash pinned at first download)."""
    digest = sha256_file(path)
    expected = spec.sha256 or _pinned_hash(spec.filename)
    if expected is not None and digest != expected:
        raise CheckpointError(
            f"checkpoint {path} fails its SHA256 check (expected {expected}, got {digest});"
            " delete it and download again"
        )
    if expected is None:
        _pin_hash(spec.filename, digest)
    return digest


def _pins_file() -> Path:
    return cache_dir() / "sha256-pins.txt"


def _pinned_hash(filename: str) -> str | None:
    pins = _pins_file()
    if not pins.is_file():
        return None
    for line in pins.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name == filename:
            return digest
    return None


def _pin_hash(filename: str, digest: str) -> None:
    pins = _pins_file()
    pins.parent.mkdir(parents=True, exist_ok=True)
    with open(pins, "a") as handle:
        handle.write(f"{digest}  {filename}\n")
