"""The one engine factory (polypsam.engines): settings, consent for downloads, the engine cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from polypsam import engines


# -- engine factory -------------------------------------------------------------------------------
def test_weights_to_download_only_for_uncached_registry_models(tmp_path, monkeypatch):

    monkeypatch.setenv("POLYPSAM_CACHE_DIR", str(tmp_path))
    spec = engines.weights_to_download(engines.EngineSettings(model="sam2.1_hiera_tiny"))
    assert spec is not None and spec.name == "sam2.1_hiera_tiny"
    (tmp_path / spec.filename).write_bytes(b"x")
    assert engines.weights_to_download(engines.EngineSettings(model="sam2.1_hiera_tiny")) is None
    custom = engines.EngineSettings(checkpoint=str(tmp_path / "mine.pt"))
    assert engines.weights_to_download(custom) is None


def test_engine_factory_refuses_silent_download(tmp_path, monkeypatch):
    from polypsam.errors import CheckpointError, InvalidInputError

    monkeypatch.setenv("POLYPSAM_CACHE_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="not in the cache"):
        engines.create_engine(engines.EngineSettings(model="sam2.1_hiera_tiny"))
    with pytest.raises(InvalidInputError, match="unknown engine"):
        engines.create_engine(engines.EngineSettings(kind="cloud"))


def test_engine_factory_builds_custom_checkpoint(module_engine, tiny_checkpoint):
    info = module_engine.info
    assert info.image_size == 256 and info.device == "cpu"
    assert Path(info.checkpoint) == Path(tiny_checkpoint)
    assert len(info.checkpoint_sha256) == 64


def test_model_may_be_a_checkpoint_path(tiny_checkpoint, engine):
    """``EngineSettings(model="x.pt")`` is read as ``checkpoint="x.pt"``; a name that is neither
    a registry model nor a file says to use ``checkpoint=``."""
    import numpy as np

    from conftest import TEST_IMAGE_SIZE, TINY_CONFIG, synthetic_rgb
    from polypsam.errors import CheckpointError, InvalidInputError

    settings = engines.EngineSettings(model=str(tiny_checkpoint), config=TINY_CONFIG,
                                      device="cpu", image_size=TEST_IMAGE_SIZE)
    assert engines.weights_to_download(settings) is None
    by_model = engines.create_engine(settings)
    try:
        assert Path(by_model.info.checkpoint) == Path(tiny_checkpoint)
        image = synthetic_rgb(64, 80)
        (a,) = by_model.segment_2d(image, [(10, 10, 50, 40)])
        (b,) = engine.segment_2d(image, [(10, 10, 50, 40)])
        assert np.array_equal(a.mask, b.mask) and a.score == b.score
    finally:
        by_model.close()
    with pytest.raises(CheckpointError, match="missing.pt"):  # a path: "not found", not "unknown"
        engines.create_engine(engines.EngineSettings(model="missing.pt", config=TINY_CONFIG))
    with pytest.raises(InvalidInputError, match=r"unknown model 'sam3'.*checkpoint='path/to/file\.pt'"):
        engines.create_engine(engines.EngineSettings(model="sam3"))
