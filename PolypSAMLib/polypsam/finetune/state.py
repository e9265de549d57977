"""The last epoch's training state, so that ``--resume`` continues bit-for-bit.

Written after every epoch into ``OUT.pt.state/`` without pickle: ``model.pt`` (the trainable
tensors), ``trainer.pt`` (optimizer and LR-scheduler state dicts, the RNG state as a tensor), both
read back with ``torch.load(weights_only=True)``, and ``state.json`` (epoch, metrics history,
best Dice and the run's identity, which a resumed run must match). ``state.json`` is written
last, so a state whose JSON names epoch ``e`` is complete for that epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InvalidInputError


def state_dir(output: Path) -> Path:
    return output.with_name(output.name + ".state")


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state(generator) -> dict:
    """RNG state as tensors. Every random choice of training (order, box jitter, augmentation)
    draws from this one generator; model construction's draws from torch's global RNG do not
    matter once the weights are loaded, so that RNG is left alone."""
    return {"generator": generator.get_state()}


def set_rng_state(state: dict, generator) -> None:
    generator.set_state(state["generator"])


def save_state(output: Path, *, model, trainable: list[str], optimizer, scheduler, generator,
               info: dict) -> Path:
    """Write the state after an epoch; ``info`` is JSON (epoch, history, best, identity)."""
    folder = state_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    _atomic_save({name: params[name].detach().cpu() for name in trainable}, folder / "model.pt")
    _atomic_save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "rng": rng_state(generator)}, folder / "trainer.pt")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    os.replace(tmp, folder / "state.json")
    return folder


def load_state_info(output: Path) -> dict:
    path = state_dir(output) / "state.json"
    if not path.is_file():
        raise InvalidInputError(
            f"nothing to resume: {path} not found (run without --resume to start training)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"training state {path} could not be read: {exc}") from exc


def restore_state(output: Path, *, model, optimizer, scheduler, generator) -> None:
    """Load the tensors of the last epoch back into the model, optimizer, scheduler and RNGs."""
    import torch

    folder = state_dir(output)
    try:
        weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        trainer = torch.load(folder / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInputError(f"training state in {folder} could not be read: {exc}") from exc
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            if name not in params or params[name].shape != value.shape:
                raise InvalidInputError(f"training state in {folder} does not fit the model ({name})")
            params[name].copy_(value)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"], generator)
