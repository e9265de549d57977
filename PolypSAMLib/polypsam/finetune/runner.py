"""The fine-tuning run: check everything, prepare features, train epochs, save, resume."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from .. import __version__
from ..checkpoints import checkpoint_sidecar_path, write_checkpoint_sidecar
from ..errors import InvalidInputError
from ..preprocess import intensity_text
from .data import fingerprint, load_dataset, split_samples
from .embedding_cache import EmbeddingCache, default_root
from .sidecar import plot_metrics, write_metrics_csv
from .state import load_state_info, restore_state, save_state
from .train import (FinetuneConfig, FinetuneResult, Trainer, make_optimizer, run_identity,
                    train_epoch, trainable_names)


def _bar(total: int, desc: str, unit: str, enabled: bool, leave: bool = True):
    """A bar on a terminal; in a log, plain lines: one per epoch, none per batch."""
    from ..progress import progress_bar

    return progress_bar(total, desc, unit, enabled=enabled, leave=leave,
                        every_update=unit == "epoch")


def _load_data(cfg: FinetuneConfig):
    """``(train, val, intensity, split)``: the samples, the intensity mapping of their scalar
    images (``None``: all RGB) and how the validation set was chosen."""
    from ..preprocess import parse_intensity

    intensity = parse_intensity(cfg.window) if cfg.window else None
    dataset = load_dataset(cfg.data, intensity=intensity, label=cfg.label)
    val = (load_dataset(cfg.val, intensity=intensity or dataset.intensity, label=cfg.label)
           if cfg.val else None)
    train_set, val_set = split_samples(dataset, cfg.val_split, cfg.seed, val)
    if val is not None:
        split = {"method": "separate validation data (--val)", "val_source": str(cfg.val)}
    elif dataset.splits is not None:
        split = {"method": "the manifest's split column"}
    else:
        split = {"method": "seeded random split of the files (a volume's slices stay together)",
                 "seed": cfg.seed, "val_fraction": cfg.val_split}
    used = intensity or dataset.intensity or (val.intensity if val is not None else None)
    if not any(s.scalar for s in (*train_set, *val_set)):
        used = None
    return train_set, val_set, used, split


def _files(samples) -> list[dict]:
    """The image and mask files of ``samples`` (relative paths), each file once, in order."""
    seen: dict[str, dict] = {}
    for s in samples:
        seen.setdefault(s.group, {"image": s.group, "mask": s.mask_name})
    return list(seen.values())


def intensity_record(intensity, window: str | None) -> dict | None:
    """The sidecar's ``intensity``: the mapping of scalar inputs in training (read back by the
    engine factory, which applies it at inference unless a call gives another)."""
    from ..preprocess import describe_intensity, intensity_text

    if intensity is None:
        return None
    return {"mapping": intensity_text(intensity), "description": describe_intensity(intensity),
            "given_as": window or "default", "applies_to": "scalar images (CT/MR slices, grey"
            " frames); RGB frames are used as they are"}


def _outputs(output: Path) -> list[Path]:
    """What a run writes for ``output`` (checkpoint, sidecar, metrics, state) that exists now."""
    from ..checkpoints import checkpoint_sidecar_path
    from .sidecar import metrics_csv_path, metrics_png_path
    from .state import state_dir

    return [p for p in (output, checkpoint_sidecar_path(output), metrics_csv_path(output),
                        metrics_png_path(output), state_dir(output)) if p.exists()]


def check_output(cfg: FinetuneConfig, output: Path, base_path: Path) -> list[Path]:
    """Refuse to overwrite an earlier run's checkpoint or saved state without ``--resume`` or
    ``--overwrite``; returns what ``--overwrite`` will delete."""
    if cfg.resume and cfg.overwrite:
        raise InvalidInputError("--resume continues the saved run, --overwrite deletes it:"
                                " give one of them")
    if output.resolve() == Path(base_path).resolve():
        raise InvalidInputError(f"-o {output} is the base checkpoint: write elsewhere")
    existing = [] if cfg.resume else _outputs(output)
    if existing and not cfg.overwrite:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in existing)
        raise InvalidInputError(
            f"{output} already holds a fine-tuning run ({names}): continue it with --resume, or"
            " start again with --overwrite (which deletes them)")
    return existing


def _resolve_base(cfg: FinetuneConfig):
    from ..engines import checkpoint_for, settings_for

    settings = settings_for(cfg.base, cfg.config, device=cfg.device, image_size=cfg.image_size)
    return checkpoint_for(settings, allow_download=cfg.allow_download)


def run(cfg: FinetuneConfig, *, progress: bool = True,
        on_epoch_end: Optional[Callable[[dict], None]] = None) -> FinetuneResult:
    import torch

    from ..sam2_adapter.model import build_model, save_checkpoint, select_device

    cfg.check()
    output = Path(cfg.output).expanduser()
    train_set, val_set, intensity, split = _load_data(cfg)
    base = _resolve_base(cfg)
    stale = check_output(cfg, output, base.path)
    train_fp, val_fp = fingerprint(train_set), fingerprint(val_set)
    identity = run_identity(cfg, base.sha256, base.config, base.image_size, train_fp, val_fp)
    info = load_state_info(output) if cfg.resume else None
    if info is not None and info.get("identity") != identity:
        changed = sorted(k for k in identity if info.get("identity", {}).get(k) != identity[k])
        raise InvalidInputError(
            f"cannot resume {output.name}: the run differs from the saved one in"
            f" {', '.join(changed)} (only --epochs and --device may change)"
        )
    if info is not None and int(info.get("best_epoch", 0)) > 0 and not output.is_file():
        raise InvalidInputError(
            f"cannot resume: the best checkpoint so far, {output}, is missing (its state in"
            f" {output.name}.state/ remains); start again without --resume"
        )
    device = select_device(None if cfg.device in ("", "auto") else cfg.device)
    model = build_model(base.config, base.path, device, image_size=base.image_size)
    for path in stale:  # --overwrite, once everything is checked: no mix of two runs
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    model.eval()  # the inference path; see polypsam.finetune.train
    trainable = trainable_names(model, cfg.train)

    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_root()
    cache_args = dict(root=root, base_sha256=base.sha256, config=base.config,
                      image_size=base.image_size, device=device)
    train_cache = (EmbeddingCache(model, dtype=cfg.cache_dtype, **cache_args)
                   if cfg.cached else None)
    # Validation features in float32: exactly what an engine computes from the saved checkpoint.
    val_cache = EmbeddingCache(model, dtype="float32", **cache_args) if cfg.frozen_encoder else None
    trainer = Trainer(model, cfg, image_size=base.image_size, device=device, train_set=train_set,
                      val_set=val_set, train_cache=train_cache, val_cache=val_cache)
    encoded = (len(train_set) if train_cache else 0) + (len(val_set) if val_cache else 0)
    if encoded:
        with _bar(encoded, "image features", "image", progress) as bar:
            if train_cache:
                trainer.train_keys = train_cache.prepare(train_set, bar)
            trainer.val_keys = val_cache.prepare(val_set, bar)

    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.patience,
        min_lr=min(cfg.min_lr, cfg.lr))
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best_dice, best_epoch, start = float("-inf"), 0, 0
    if info is not None:
        restore_state(output, model=model, optimizer=optimizer, scheduler=scheduler,
                      generator=generator)
        history, start = info["history"], int(info["epoch"])
        best_dice, best_epoch = float(info["best_dice"]), int(info["best_epoch"])

    base_info = {
        "polypsam_version": __version__, "torch_version": torch.__version__,
        "config": base.config, "image_size": base.image_size,
        "base_checkpoint": {"name": base.model, "path": str(base.path), "sha256": base.sha256},
        "intensity": intensity_record(intensity, cfg.window),
        "data": {"source": str(cfg.data), "val_source": cfg.val, "train_samples": len(train_set),
                 "val_samples": len(val_set), "train_fingerprint": train_fp,
                 "val_fingerprint": val_fp,
                 "window": None if intensity is None else intensity_text(intensity),
                 "label": cfg.label, "split": split,
                 # image and mask paths relative to source (validation: to val_source)
                 "train_files": _files(train_set), "val_files": _files(val_set)},
        "hyperparameters": {
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "optimizer": "AdamW",
            "lr": cfg.lr, "weight_decay": cfg.weight_decay, "loss": "dice+bce",
            "scheduler": {"name": "ReduceLROnPlateau", "mode": "max", "metric": "val_dice",
                          "factor": cfg.lr_factor, "patience": cfg.patience,
                          "min_lr": min(cfg.min_lr, cfg.lr)},
            "train": cfg.train, "augment": cfg.augment, "box_jitter": cfg.box_jitter,
            "val_split": None if cfg.val else cfg.val_split, "cached_features": cfg.cached,
            "cache_dtype": cfg.cache_dtype if cfg.cached else None},
        "seed": cfg.seed,
    }
    n_batches = (len(train_set) + cfg.batch_size - 1) // cfg.batch_size
    with _bar(cfg.epochs, "fine-tuning", "epoch", progress) as epochs_bar:
        epochs_bar.update(start)
        for epoch in range(start, cfg.epochs):
            began = time.perf_counter()
            with _bar(n_batches, f"epoch {epoch + 1}", "batch", progress, leave=False) as bar:
                train_loss = train_epoch(trainer, optimizer, generator, cfg.batch_size, bar)
            metrics, _ = trainer.validate()
            lr = float(optimizer.param_groups[0]["lr"])
            scheduler.step(metrics["dice"])
            improved = metrics["dice"] > best_dice
            # Compute time of the epoch (training steps and validation; not the file writing).
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                   **{f"val_{k}": v for k, v in metrics.items()}, "improved": improved,
                   "seconds": round(time.perf_counter() - began, 3)}
            history.append(row)
            if improved:
                best_dice, best_epoch = metrics["dice"], epoch + 1
                save_checkpoint(model, output)
            best = next(r for r in history if r["epoch"] == best_epoch)
            write_checkpoint_sidecar(output, {**base_info, "best": best, "epochs_run": len(history),
                                   "history": history})
            write_metrics_csv(output, history)
            plot_metrics(output, history)
            save_state(output, model=model, trainable=trainable, optimizer=optimizer,
                       scheduler=scheduler, generator=generator,
                       info={"epoch": epoch + 1, "history": history, "best_dice": best_dice,
                             "best_epoch": best_epoch, "identity": identity})
            epochs_bar.set_postfix(loss=f"{row['train_loss']:.4f}", dice=f"{metrics['dice']:.4f}",
                                   best=f"{best_dice:.4f}")
            epochs_bar.update(1)
            if on_epoch_end is not None:
                on_epoch_end(row)
    from .sidecar import metrics_csv_path

    return FinetuneResult(output, checkpoint_sidecar_path(output), metrics_csv_path(output), history,
                          best_epoch, best_dice)


def finetune(cfg: FinetuneConfig, *, progress: bool = True,
             on_epoch_end: Optional[Callable[[dict], None]] = None) -> FinetuneResult:
    """Run (or resume) fine-tuning (the recipe: :mod:`polypsam.finetune.train`). Bad input fails
    before training."""
    return run(cfg, progress=progress, on_epoch_end=on_epoch_end)
