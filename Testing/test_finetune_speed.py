"""Fine-tuning's speed-ups keep what is trained: same loss and gradients as the plain computation.

Real SAM2 tiny (random base weights) at image size 256 on two shared polyp images; the speed
itself is measured in ``benchmarks/bench_finetune.py`` (BENCHMARKS.md), not here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG

IMAGES = (("cvc_clinicdb", "1.png"), ("kvasir_seg", "cju0roawvklrq0799vmjorwfv.jpg"))


@pytest.fixture(scope="module")
def two_polyps(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("polyps")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for dataset, name in IMAGES:
            shutil.copy(shared_data / "polyp" / dataset / sub / name, root / sub)
    return root


@pytest.mark.parametrize("size_in,size_out", [(64, 256), (8, 32), (16, 40)])
def test_bilinear_matrix_is_interpolate(size_in, size_out):
    from polypsam.finetune.train import bilinear_matrix

    x = torch.randn(3, size_in, size_in, generator=torch.Generator().manual_seed(0))
    matrix = bilinear_matrix(size_in, size_out)
    expected = F.interpolate(x[:, None], (size_out, size_out), mode="bilinear",
                             align_corners=False)[:, 0]
    torch.testing.assert_close(matrix @ (x @ matrix.T), expected, rtol=0, atol=1e-5)


def _cache(model, root, checkpoint, dtype, budget=2 << 30):
    from polypsam.checkpoints import sha256_file
    from polypsam.finetune.embedding_cache import EmbeddingCache

    return EmbeddingCache(model, root=root, base_sha256=sha256_file(checkpoint), config=TINY_CONFIG,
                          image_size=TEST_IMAGE_SIZE, device="cpu", dtype=dtype,
                          memory_budget=budget)


def test_cache_gathers_the_stored_values_from_memory_or_disk(two_polyps, tiny_checkpoint,
                                                             tmp_path):
    from polypsam.finetune.data import load_dataset
    from polypsam.sam2_adapter.model import build_model

    samples = load_dataset(two_polyps).samples
    model = build_model(TINY_CONFIG, tiny_checkpoint, "cpu", image_size=TEST_IMAGE_SIZE)
    keys = _cache(model, tmp_path, tiny_checkpoint, "float16").prepare(samples)
    rows = [keys[1], keys[0], keys[1]]  # a key repeats for an image with several boxes
    stored = [torch.load(tmp_path / k[:2] / f"{k}.pt", weights_only=True) for k in rows]
    expected = [torch.stack([s[name] for s in stored]).float()
                for name in ("image_embed", "feat_s0", "feat_s1")]
    one_entry = 2 * sum(t.numel() for t in stored[0].values())  # bytes of one float16 entry
    for budget in (2 << 30, one_entry, 0):  # float32 in memory, float16 in memory, disk only
        cache = _cache(model, tmp_path, tiny_checkpoint, "float16", budget)
        for _ in range(2):
            image_embed, (s0, s1) = cache.batch(rows)
            for got, want in zip((image_embed, s0, s1), expected):
                assert got.dtype == torch.float32 and torch.equal(got, want)
        assert cache.computed == 0
        assert cache.loaded == {2 << 30: 2, one_entry: 3, 0: 6}[budget]


def test_training_step_equals_the_plain_computation(two_polyps, tiny_checkpoint, tmp_path):
    """Trainer.batch_loss + Trainer.backward (fused LayerNorm2d, channels-last embedding, gradient
    layout hook, matrix upsampling, no oneDNN) against box_logits → F.interpolate → Dice+BCE → backward."""
    from polypsam.finetune import FinetuneConfig
    from polypsam.finetune.data import load_dataset
    from polypsam.finetune.train import Trainer, dice_bce_loss, trainable_names
    from polypsam.sam2_adapter.image import box_logits
    from polypsam.sam2_adapter.model import build_model

    samples = load_dataset(two_polyps).samples
    assert sum(len(s.boxes) for s in samples) == 3  # the Kvasir image holds two polyps
    model = build_model(TINY_CONFIG, tiny_checkpoint, "cpu", image_size=TEST_IMAGE_SIZE)
    model.eval()
    trainable_names(model, "decoder+prompt")
    cache = _cache(model, tmp_path, tiny_checkpoint, "float32")
    keys = cache.prepare(samples)
    cfg = FinetuneConfig(data=str(two_polyps), output=str(tmp_path / "x.pt"),
                         image_size=TEST_IMAGE_SIZE, config=TINY_CONFIG)
    trainer = Trainer(model, cfg, image_size=TEST_IMAGE_SIZE, device="cpu", train_set=samples,
                      val_set=samples[:1], train_cache=cache)
    trainer.train_keys = keys

    def grads():
        out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    loss = trainer.batch_loss([0, 1], torch.Generator().manual_seed(0))
    trainer.backward(loss)
    fast = grads()

    rows = [i for i, s in enumerate(samples) for _ in s.boxes]
    image_embed, high_res = cache.batch([keys[i] for i in rows])
    boxes = torch.tensor([b.to_list() for s in samples for b in s.boxes])
    sizes = [(samples[i].height, samples[i].width) for i in rows]
    low_res, _ = box_logits(model, image_embed, high_res, boxes, [h for h, _ in sizes],
                            [w for _, w in sizes])
    logits = F.interpolate(low_res, (TEST_IMAGE_SIZE,) * 2, mode="bilinear",
                           align_corners=False)[:, 0]
    targets = torch.cat([trainer.targets[i].float() for i in range(len(samples))])
    plain_loss = dice_bce_loss(logits, targets)
    plain_loss.backward()
    plain = grads()

    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert fast.keys() == plain.keys() and any("sam_prompt_encoder" in n for n in fast)
    flat_fast = torch.cat([fast[n].flatten() for n in sorted(fast)])
    flat_plain = torch.cat([plain[n].flatten() for n in sorted(plain)])
    assert (flat_fast - flat_plain).norm() <= 1e-5 * flat_plain.norm()
    for name in fast:  # every tensor to float rounding (k_proj biases have ~0 true gradient)
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-4,
                                   atol=1e-6 * plain[name].abs().max().item() + 1e-9)
    assert torch.backends.mkldnn.enabled  # restored after the backward
    assert "forward" not in vars(model.sam_mask_decoder.output_upscaling[1])  # SAM2's own again
