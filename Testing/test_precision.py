"""SAM2's precision and look-ahead encoder batches (issue 19), tested on the CPU.

The bfloat16 path is the code a CUDA GPU runs, with the CPU's autocast: forward hooks on SAM2's
own modules record whether autocast was on in each of them. Batched encoding is checked against
one-frame-at-a-time encoding (features to float rounding, tracked masks).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG, synthetic_rgb
from polypsam.engine import FramePrompt, Prompt
from polypsam.errors import InvalidInputError
from polypsam.sam2_adapter.precision import resolve_precision

MODULES = ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "memory_attention",
           "memory_encoder")


class AutocastLog:
    """For each SAM2 module, whether CPU autocast (bfloat16) was on in each of its calls."""

    def __init__(self, model) -> None:
        self.seen: dict[str, set] = {name: set() for name in MODULES}
        self._handles = [getattr(model, name).register_forward_pre_hook(self._hook(name))
                         for name in MODULES]

    def _hook(self, name):
        def hook(_module, _args):
            on = torch.is_autocast_enabled("cpu")
            dtype = torch.get_autocast_dtype("cpu") if on else torch.float32
            self.seen[name].add(dtype)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@pytest.fixture(scope="module")
def bf16_engine(tiny_checkpoint):
    from polypsam.engines import engine_for

    eng = engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE,
                     precision="bf16")
    yield eng
    eng.close()


def frames(n: int = 6) -> np.ndarray:
    return np.stack([synthetic_rgb(96, 128, seed=t) for t in range(n)])


def run_everything(engine) -> tuple[list, list]:
    """A box, a click with candidates, and a tracking pass: every SAM2 module runs."""
    image = synthetic_rgb(96, 128, seed=40)
    results = engine.segment_2d(image, [Prompt(box=(20, 20, 80, 70)),
                                        Prompt(points=[(50, 40)], labels=[1])])
    results += engine.segment_2d(image, [Prompt(points=[(50, 40)], labels=[1])], multimask=True)
    tracked = list(engine.track(frames(), [FramePrompt(0, 1, box=(20, 20, 80, 70))],
                                start_frame=0))
    return results, tracked


def test_precision_choices_per_device():
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert resolve_precision("auto", cpu).name == "fp32"  # CPU masks unchanged by default
    assert resolve_precision("bf16", cpu).name == "bf16"
    assert resolve_precision("FP32", cpu).name == "fp32"
    assert resolve_precision("auto", mps).name == "fp32"  # MPS keeps float32
    with pytest.raises(InvalidInputError, match="not supported on MPS"):
        resolve_precision("bf16", mps)
    with pytest.raises(InvalidInputError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", cpu)


def test_default_cpu_engine_runs_sam2_in_float32(engine):
    assert engine.precision == "fp32" and engine.info.precision == "fp32"
    log = AutocastLog(engine.model)
    try:
        run_everything(engine)
    finally:
        log.remove()
    assert log.seen == {name: {torch.float32} for name in MODULES}


def test_bf16_runs_every_sam2_forward_under_autocast_and_returns_float32_bool(bf16_engine, engine):
    log = AutocastLog(bf16_engine.model)
    try:
        results, tracked = run_everything(bf16_engine)
    finally:
        log.remove()
    assert log.seen == {name: {torch.bfloat16} for name in MODULES}
    assert not torch.is_autocast_enabled("cpu")  # nothing leaks to the caller between frames
    assert bf16_engine.info.precision == "bf16"
    assert bf16_engine.info.provenance()["precision"] == "bf16"
    reference, ref_tracked = run_everything(engine)
    for r, ref in zip(results, reference):
        assert r.mask.dtype == bool and r.mask.shape == ref.mask.shape
        assert type(r.score) is float and np.isfinite(r.score)
        assert all(type(s) is float for s in r.candidate_scores)
        assert all(c.dtype == bool for c in r.candidates)
    assert [fm.frame for fm in tracked] == [fm.frame for fm in ref_tracked]
    for fm in tracked:
        assert all(m.dtype == bool and m.shape == (96, 128) for m in fm.masks.values())
        assert all(type(s) is float for s in fm.scores.values())


def test_precision_reaches_the_engine_from_settings_cli_and_server(tiny_checkpoint):
    import argparse

    from polypsam.cli import options
    from polypsam.cli import build_parser
    from polypsam.engines import EngineSettings

    parser = argparse.ArgumentParser()
    options.add_engine_options(parser)
    args = parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--precision", "bf16"])
    settings = options.engine_settings_from_args(args)
    assert settings.precision == "bf16"
    assert options.engine_settings_from_args(parser.parse_args([])).precision == "auto"
    assert EngineSettings().precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
    serve = build_parser().parse_args(["serve", "--precision", "fp32"])
    assert serve.precision == "fp32"


# -- look-ahead encoder batches -------------------------------------------------------------------
def test_batched_encoding_gives_the_same_features(engine):
    from polypsam.sam2_adapter.image import model_input
    from polypsam.sam2_adapter.lookahead import split_backbone

    model = engine.model
    images = torch.stack([model_input(f.astype(np.float32) / 255, TEST_IMAGE_SIZE)
                          for f in frames(3)])
    with torch.inference_mode():
        together = split_backbone(model.forward_image(images), 3)
        alone = [model.forward_image(images[i:i + 1]) for i in range(3)]
    for t, a in zip(together, alone):
        assert t.keys() == a.keys()
        for key in ("backbone_fpn", "vision_pos_enc"):
            for x, y in zip(t[key], a[key]):
                assert x.shape == y.shape
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(t["vision_features"], a["vision_features"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_tracking_with_encoder_batches_equals_one_at_a_time(engine, reverse):
    from polypsam.sam2_adapter.video import VideoSession

    seq = frames(7)
    start = 6 if reverse else 0
    prompts = [FramePrompt(start, 1, box=(20, 20, 80, 70)), FramePrompt(3, 1, box=(22, 18, 84, 72))]
    calls = []
    handle = engine.model.image_encoder.register_forward_pre_hook(
        lambda _m, args: calls.append(args[0].shape[0]))
    try:
        one = list(VideoSession(engine.model, seq, prompts).run(start_frame=start, reverse=reverse))
        calls_one = list(calls)
        calls.clear()
        session = VideoSession(engine.model, seq, prompts, encoder_batch=3)
        batched = list(session.run(start_frame=start, reverse=reverse))
    finally:
        handle.remove()
    # the 5 frames not prompted are encoded in batches of 3 and 2 in visit order (not 5 calls);
    # the prompted frames as before, one at a time
    assert session.lookahead.batches == 2 and [c for c in calls if c > 1] == [3, 2]
    assert sum(calls) == sum(calls_one) and len(calls) == len(calls_one) - 5 + 2
    assert [fm.frame for fm in batched] == [fm.frame for fm in one]
    for b, o in zip(batched, one):
        agree = (b.masks[1] == o.masks[1]).mean()
        assert agree >= 0.999, f"frame {b.frame}: {agree:.5f} of pixels agree"
        assert b.scores[1] == pytest.approx(o.scores[1], abs=1e-3)


def test_encoder_batch_setting():
    from polypsam.sam2_adapter.lookahead import resolve_encoder_batch

    assert resolve_encoder_batch(0, torch.device("cpu")) == 1
    assert resolve_encoder_batch(0, torch.device("cuda")) == 4
    assert resolve_encoder_batch(2, torch.device("cpu")) == 2
    with pytest.raises(InvalidInputError, match="encoder batch"):
        resolve_encoder_batch(-1, torch.device("cpu"))
