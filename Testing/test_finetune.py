"""``polypsam finetune``: real SAM2 tiny (random base weights) at image size 256 on shared polyp images.

One uninterrupted 3-epoch run through the CLI serves several checks (loss goes down, frozen
encoder untouched, checkpoint loads through the engine factory and reproduces the sidecar's
validation Dice); an interrupted and resumed run must equal it bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import replace
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG

CVC = ("1", "100", "250", "400", "550")
KVASIR_TWO_POLYPS = "cju0roawvklrq0799vmjorwfv"  # two polyps and a JPEG-noise speck at (0, 0)


@pytest.fixture(scope="module")
def polyp_folder(shared_data, tmp_path_factory) -> Path:
    """Six shared polyp images in the Kvasir-SEG/CVC-ClinicDB layout (images/, masks/)."""
    root = tmp_path_factory.mktemp("polyps")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for name in CVC:
            shutil.copy(shared_data / "polyp/cvc_clinicdb" / sub / f"{name}.png", root / sub)
        shutil.copy(shared_data / "polyp/kvasir_seg" / sub / f"{KVASIR_TWO_POLYPS}.jpg", root / sub)
    return root


def _config(data, output, checkpoint, **changes):
    from polypsam.finetune import FinetuneConfig

    base = dict(data=str(data), output=str(output), base=str(checkpoint), config=TINY_CONFIG,
                image_size=TEST_IMAGE_SIZE, epochs=3, batch_size=4, seed=3, device="cpu",
                cache_dir=str(Path(output).parent / "features"))
    base.update(changes)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def full_run(polyp_folder, tiny_checkpoint, tmp_path_factory):
    """An uninterrupted 3-epoch run through ``polypsam finetune`` (the CLI)."""
    from polypsam.cli import main

    out = tmp_path_factory.mktemp("full") / "polyp.pt"
    rc = main(["finetune", str(polyp_folder), "-o", str(out), "--base", str(tiny_checkpoint),
               "--config", TINY_CONFIG, "--image-size", str(TEST_IMAGE_SIZE), "--epochs", "3",
               "--seed", "3", "--device", "cpu", "--cache-dir", str(out.parent / "features")])
    assert rc == 0
    return out


def _splits(polyp_folder):
    from polypsam.finetune.data import load_dataset, split_samples

    return split_samples(load_dataset(polyp_folder), 0.2, 3)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _independent_loss(checkpoint: Path, samples) -> float:
    """Dice + BCE over every box of ``samples``, written here from torch primitives."""
    import torch.nn.functional as F

    from polypsam.finetune.train import component_targets
    from polypsam.sam2_adapter.image import box_logits, image_features, model_input
    from polypsam.sam2_adapter.model import build_model

    model = build_model(TINY_CONFIG, checkpoint, "cpu", image_size=TEST_IMAGE_SIZE)
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            x = model_input(s.load_rgb(), TEST_IMAGE_SIZE)[None]
            embed, high = image_features(model, model.forward_image(x))
            for box, target in zip(s.boxes, component_targets(s, TEST_IMAGE_SIZE)):
                low, _ = box_logits(model, embed, high, torch.tensor([box.to_list()]),
                                    s.height, s.width)
                logit = F.interpolate(low, (TEST_IMAGE_SIZE,) * 2, mode="bilinear")[0, 0]
                t = target.float()
                p = torch.sigmoid(logit)
                dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
                total += float(dice + F.binary_cross_entropy_with_logits(logit, t))
                count += 1
    return total / count


def test_short_run_lowers_loss_and_keeps_the_frozen_encoder(full_run, polyp_folder, tiny_checkpoint):
    train_set, _ = _splits(polyp_folder)
    before = _independent_loss(tiny_checkpoint, train_set)
    after = _independent_loss(full_run, train_set)
    assert after < before

    base, tuned = _weights(tiny_checkpoint), _weights(full_run)
    assert base.keys() == tuned.keys()
    frozen = [k for k in base if k.startswith("image_encoder.")]
    assert frozen and all(torch.equal(base[k], tuned[k]) for k in frozen)
    for part in ("sam_mask_decoder.transformer.", "sam_mask_decoder.output_upscaling.",
                 "sam_prompt_encoder.point_embeddings."):
        keys = [k for k in base if k.startswith(part)]
        assert keys and any(not torch.equal(base[k], tuned[k]) for k in keys), part
    # Outputs next to the checkpoint: sidecar, metrics CSV and plot, resume state.
    sidecar = json.loads(Path(str(full_run) + ".json").read_text())
    assert sidecar["config"] == TINY_CONFIG and sidecar["image_size"] == TEST_IMAGE_SIZE
    assert sidecar["base_checkpoint"]["sha256"] == __import__(
        "polypsam.checkpoints", fromlist=["sha256_file"]).sha256_file(tiny_checkpoint)
    assert [r["epoch"] for r in sidecar["history"]] == [1, 2, 3]
    assert sidecar["hyperparameters"]["lr"] == 1e-4 and sidecar["seed"] == 3
    assert sidecar["data"]["train_samples"] + sidecar["data"]["val_samples"] == 6
    csv_lines = full_run.with_name("polyp.metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("epoch,lr,train_loss,val_dice")
    assert full_run.with_name("polyp.metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_loads_through_engine_path_and_reproduces_val_dice(full_run, polyp_folder,
                                                                     tmp_path):
    """Masks from the normal engine path, scored by ``polypsam evaluate``'s code, give the
    sidecar's validation Dice exactly."""
    from polypsam.engines import engine_for
    from polypsam.evaluation import evaluate_paths
    from polypsam.io import read_image, write_png

    engine = engine_for(full_run, device="cpu")  # config and image size come from the sidecar
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    gt_dir.mkdir()
    try:
        assert engine.info.image_size == TEST_IMAGE_SIZE and engine.info.config == TINY_CONFIG
        _, val_set = _splits(polyp_folder)
        for sample in val_set:
            image = read_image(polyp_folder / sample.name)
            results = engine.segment_2d(image, list(sample.boxes))
            pred = np.logical_or.reduce([r.mask for r in results])
            stem = Path(sample.name).stem
            write_png(pred.astype(np.uint8), pred_dir / f"{stem}.png")
            mask = next((polyp_folder / "masks").glob(f"{stem}.*"))
            shutil.copy(mask, gt_dir / mask.name)
    finally:
        engine.close()
    rows = {r.case: r.dice for r in evaluate_paths(pred_dir, gt_dir, labels=[1])}
    dices = [rows[Path(s.name).stem] for s in val_set]
    sidecar = json.loads(Path(str(full_run) + ".json").read_text())
    assert float(np.mean(dices)) == sidecar["best"]["val_dice"]

    # `polypsam segment --checkpoint OUT.pt` needs neither --config nor --image-size either.
    from polypsam.cli import main

    sample = val_set[0]
    args = ["segment", str(polyp_folder / sample.name), "-o", str(tmp_path / "cli.png"),
            "--checkpoint", str(full_run), "--device", "cpu"]
    for box in sample.boxes:
        args += ["--box", *(str(v) for v in box.to_list())]
    assert main(args) == 0
    cli_mask = read_image(tmp_path / "cli.png") > 0
    assert np.array_equal(cli_mask, read_image(pred_dir / f"{Path(sample.name).stem}.png") > 0)


class _Stop(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(full_run, polyp_folder, tiny_checkpoint,
                                                       tmp_path):
    from polypsam.errors import InvalidInputError
    from polypsam.finetune import finetune

    out = tmp_path / "polyp.pt"
    cfg = _config(polyp_folder, out, tiny_checkpoint)
    with pytest.raises(InvalidInputError, match="nothing to resume"):
        finetune(replace(cfg, resume=True), progress=False)

    def stop_after_first(row):
        if row["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        finetune(cfg, progress=False, on_epoch_end=stop_after_first)
    with pytest.raises(InvalidInputError, match="lr"):  # a changed recipe cannot resume
        finetune(replace(cfg, resume=True, lr=2e-4), progress=False)
    result = finetune(replace(cfg, resume=True), progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]

    a, b = _weights(full_run), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("model.pt", "trainer.pt"):
        sa = torch.load(Path(str(full_run) + ".state") / name, weights_only=True)
        sb = torch.load(Path(str(out) + ".state") / name, weights_only=True)
        _assert_same(sa, sb)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    full = json.loads(Path(str(full_run) + ".json").read_text())
    assert drop(result.history) == drop(full["history"])


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_cached_features_give_the_same_loss_as_the_encoder_each_step(polyp_folder, tiny_checkpoint,
                                                                     tmp_path):
    from polypsam.finetune.embedding_cache import EmbeddingCache
    from polypsam.finetune.train import Trainer, trainable_names
    from polypsam.checkpoints import sha256_file
    from polypsam.sam2_adapter.model import build_model

    train_set, val_set = _splits(polyp_folder)
    model = build_model(TINY_CONFIG, tiny_checkpoint, "cpu", image_size=TEST_IMAGE_SIZE)
    trainable_names(model, "decoder+prompt")
    batch = [0, 2, 4]
    losses = {}
    for name, dtype, cached in (("fp32", "float32", True), ("fp16", "float16", True),
                                ("encoder", "float32", False)):
        cfg = _config(polyp_folder, tmp_path / "x.pt", tiny_checkpoint, cache_dtype=dtype,
                      cache_features=cached, box_jitter=0.1)
        cache = EmbeddingCache(model, root=tmp_path / "features", base_sha256=sha256_file(
            tiny_checkpoint), config=TINY_CONFIG, image_size=TEST_IMAGE_SIZE, device="cpu",
            dtype=dtype) if cached else None
        trainer = Trainer(model, cfg, image_size=TEST_IMAGE_SIZE, device="cpu",
                          train_set=train_set, val_set=val_set, train_cache=cache)
        if cache is not None:
            trainer.train_keys = cache.prepare(train_set)
            assert cache.computed == len(train_set)
            assert cache.prepare(train_set) == trainer.train_keys and cache.computed == len(train_set)
        losses[name] = trainer.batch_loss(batch, torch.Generator().manual_seed(7)).item()
    assert losses["fp32"] == pytest.approx(losses["encoder"], rel=1e-5)
    assert losses["fp16"] == pytest.approx(losses["encoder"], rel=1e-2)


def test_train_all_reaches_the_encoder_and_augment_run_keeps_it_frozen(polyp_folder,
                                                                       tiny_checkpoint, tmp_path):
    from polypsam.finetune import finetune
    from polypsam.finetune.train import Trainer, trainable_names
    from polypsam.sam2_adapter.model import build_model

    train_set, val_set = _splits(polyp_folder)
    model = build_model(TINY_CONFIG, tiny_checkpoint, "cpu", image_size=TEST_IMAGE_SIZE)
    names = trainable_names(model, "all")
    assert any(n.startswith("image_encoder.") for n in names) and "no_mem_embed" in names
    cfg = _config(polyp_folder, tmp_path / "x.pt", tiny_checkpoint, train="all")
    trainer = Trainer(model, cfg, image_size=TEST_IMAGE_SIZE, device="cpu", train_set=train_set,
                      val_set=val_set)
    trainer.batch_loss([1], torch.Generator().manual_seed(0)).backward()
    grads = dict(model.named_parameters())
    assert grads["image_encoder.trunk.patch_embed.proj.weight"].grad.abs().sum() > 0

    out = tmp_path / "aug.pt"
    result = finetune(_config(polyp_folder, out, tiny_checkpoint, epochs=1, augment=True,
                              box_jitter=0.1), progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    base, tuned = _weights(tiny_checkpoint), _weights(out)
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith("image_encoder."))


def test_augment_moves_image_and_masks_together():
    from polypsam.finetune.augment import AugmentSettings, augment

    mask = torch.zeros(1, 64, 64)
    mask[0, 10:30, 5:25] = 1
    image = mask.expand(3, -1, -1).clone()
    plain = AugmentSettings(brightness=0, contrast=0, saturation=0, blur_p=0)
    for seed in range(4):
        img, moved = augment(image, mask, torch.Generator().manual_seed(seed), plain)
        assert ((img[0] > 0.5) == (moved[0] > 0.5)).float().mean() > 0.99
        img2, _ = augment(image, mask, torch.Generator().manual_seed(seed), plain)
        assert torch.equal(img, img2)


def test_datasets_masks_boxes_manifest_and_ct(polyp_folder, shared_data, tmp_path):
    from polypsam.finetune.data import load_dataset, split_samples
    from polypsam.io import read_volume

    samples = {s.name: s for s in load_dataset(polyp_folder).samples}
    kvasir = samples[f"images/{KVASIR_TWO_POLYPS}.jpg"]
    assert len(kvasir.boxes) == 2  # the speck at (0, 0) gives no prompt
    assert kvasir.mask[0, 0]  # ... but stays in the truth, as the dataset ships it
    assert len(samples["images/550.png"].boxes) == 2 and len(samples["images/1.png"].boxes) == 1

    manifest = tmp_path / "list.csv"
    rows = [f"{polyp_folder}/images/{n}.png,{polyp_folder}/masks/{n}.png,{s}"
            for n, s in zip(CVC, ("train", "train", "val", "train", "val"))]
    manifest.write_text("image,mask,split\n" + "\n".join(rows) + "\n")
    train, val = split_samples(load_dataset(manifest), 0.2, 0)
    assert [s.name.rsplit("/", 1)[-1] for s in val] == ["250.png", "550.png"] and len(train) == 3

    ct = tmp_path / "ct"
    (ct / "images").mkdir(parents=True)
    (ct / "labels").mkdir()
    case = "CT_Lesion_000015_01_01_103-115"
    src = shared_data / "ct/medsam2_deeplesion"
    shutil.copy(src / f"{case}_img.nii.gz", ct / "images" / "case.nii.gz")
    shutil.copy(src / f"{case}_lesion.nii.gz", ct / "labels" / "case.nii.gz")
    from polypsam.preprocess import Window

    ds = load_dataset(ct, intensity=Window(127.5, 255))
    lesion = read_volume(ct / "labels" / "case.nii.gz").array != 0
    expected = [k for k in range(lesion.shape[0]) if lesion[k].any()]
    assert [s.name for s in ds.samples] == [f"images/case.nii.gz#k{k}" for k in expected]
    rgb = ds.samples[0].load_rgb()
    assert rgb.shape == (*lesion.shape[1:], 3) and 0 <= rgb.min() and rgb.max() <= 1
    for s in ds.samples:
        assert all(s.mask[int(b.y0):int(b.y1) + 1, int(b.x0):int(b.x1) + 1].any() for b in s.boxes)


@pytest.mark.parametrize("problem", ["size", "empty", "no pairs", "unpaired", "base config"])
def test_bad_input_fails_before_training(problem, polyp_folder, tiny_checkpoint, tmp_path):
    from PIL import Image

    from polypsam.cli import main
    from polypsam.errors import CheckpointError, InvalidInputError
    from polypsam.finetune import finetune

    data = tmp_path / "data"
    shutil.copytree(polyp_folder, data)
    config = TINY_CONFIG
    error, match = InvalidInputError, None
    if problem == "size":
        Image.new("L", (100, 80), 255).save(data / "masks" / "100.png")
        match = r"100.png is 384x288 but its mask 100.png is 100x80"
    elif problem == "empty":
        Image.new("RGB", (384, 288), (100, 100, 100)).save(data / "masks" / "250.png")
        match = r"mask 250.png is empty"
    elif problem == "no pairs":
        for p in (data / "masks").iterdir():
            p.rename(p.with_name("other_" + p.name))
        match = "no image/mask pairs found"
    elif problem == "unpaired":
        (data / "masks" / "400.png").unlink()
        match = "without a mask: 400.png"
    else:
        config, error, match = "configs/sam2.1/sam2.1_hiera_s.yaml", CheckpointError, "does not match"
    out = tmp_path / "out" / "x.pt"
    with pytest.raises(error, match=match):
        finetune(_config(data, out, tiny_checkpoint, config=config), progress=False)
    assert not out.parent.exists() or not any(out.parent.glob("x.pt*"))
    if problem == "size":  # the CLI prints one line and exits with the usage status
        assert main(["finetune", str(data), "-o", str(out), "--base", str(tiny_checkpoint),
                     "--config", TINY_CONFIG]) == 2


def test_engines_read_the_sidecar_unless_told(tiny_checkpoint, tmp_path):
    from polypsam.checkpoints import checkpoint_sidecar_path
    from polypsam.engines import EngineSettings, checkpoint_for, settings_for
    from polypsam.errors import CheckpointError, InvalidInputError

    ckpt = tmp_path / "tuned.pt"
    ckpt.symlink_to(tiny_checkpoint)
    with pytest.raises(InvalidInputError, match="needs a config"):
        checkpoint_for(settings_for(ckpt))
    checkpoint_sidecar_path(ckpt).write_text(json.dumps({"config": TINY_CONFIG, "image_size": 512}))
    resolved = checkpoint_for(settings_for(ckpt))
    assert (resolved.config, resolved.image_size) == (TINY_CONFIG, 512)
    explicit = checkpoint_for(settings_for(ckpt, "configs/sam2.1/sam2.1_hiera_s.yaml", image_size=256))
    assert (explicit.config, explicit.image_size) == ("configs/sam2.1/sam2.1_hiera_s.yaml", 256)
    # Slicer's custom checkpoint: the model combo's architecture yields to the sidecar's config.
    gui = checkpoint_for(EngineSettings(model="sam2.1_hiera_large", checkpoint=str(ckpt)))
    assert (gui.config, gui.image_size) == (TINY_CONFIG, 512)
    checkpoint_sidecar_path(ckpt).write_text("{not json")
    with pytest.raises(CheckpointError, match="sidecar"):
        checkpoint_for(settings_for(ckpt))


def test_sidecar_names_the_training_and_validation_files(full_run, polyp_folder):
    """The held-out set is named in the sidecar (relative paths and the split seed)."""
    sidecar = json.loads(Path(str(full_run) + ".json").read_text())
    data = sidecar["data"]
    train_set, val_set = _splits(polyp_folder)
    assert [f["image"] for f in data["train_files"]] == [s.group for s in train_set]
    assert [f["image"] for f in data["val_files"]] == [s.group for s in val_set]
    files = data["train_files"] + data["val_files"]
    assert len({f["image"] for f in files}) == 6  # every file once, train and val disjoint
    for f in files:
        assert not Path(f["image"]).is_absolute() and (polyp_folder / f["image"]).is_file()
        assert (polyp_folder / f["mask"]).is_file()
        assert Path(f["image"]).stem == Path(f["mask"]).stem and f["mask"].startswith("masks/")
    assert data["split"]["seed"] == 3 and data["split"]["val_fraction"] == 0.2
    # RGB frames only: no intensity mapping applied, none recorded for inference
    assert sidecar["intensity"] is None and data["window"] is None


def test_output_with_a_saved_run_needs_resume_or_overwrite(full_run, polyp_folder,
                                                           tiny_checkpoint, tmp_path, capsys):
    from polypsam.cli import main

    out = tmp_path / "polyp.pt"
    for path in full_run.parent.glob("polyp.*"):
        copy = shutil.copytree if path.is_dir() else shutil.copy
        copy(path, tmp_path / path.name)
    state = Path(str(out) + ".state") / "state.json"
    before = {p: p.read_bytes() for p in (out, state)}
    args = ["finetune", str(polyp_folder), "-o", str(out), "--base", str(tiny_checkpoint),
            "--config", TINY_CONFIG, "--image-size", str(TEST_IMAGE_SIZE), "--epochs", "1",
            "--seed", "3", "--device", "cpu", "--cache-dir", str(full_run.parent / "features")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a fine-tuning run" in err and "polyp.pt.state/" in err
    assert "--resume" in err and "--overwrite" in err
    assert all(p.read_bytes() == data for p, data in before.items())  # nothing touched
    assert main(args + ["--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main(args[:2] + ["-o", str(tiny_checkpoint)] + args[4:] + ["--overwrite"]) == 2
    assert "is the base checkpoint" in capsys.readouterr().err

    assert main(args + ["--overwrite"]) == 0  # starts again: one epoch, a fresh state
    assert json.loads(state.read_text())["epoch"] == 1
    assert [r["epoch"] for r in json.loads(Path(str(out) + ".json").read_text())["history"]] == [1]
