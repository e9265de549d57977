"""Shared pytest fixtures: a random-weight SAM2 tiny checkpoint, engines, and shared data.

The checkpoint is built once per test session from the official config and saved in the official
layout (``{"model": state_dict}``), so the real loading and inference paths run; only accuracy is
untestable with random weights. Tests never touch the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POLYPSAM_SHARED_DATA", REPO.parent / "shared" / "data"))
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TEST_IMAGE_SIZE = 256


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep checkpoint caches of the tests away from the user's cache directory."""
    os.environ["POLYPSAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("polypsam-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def manifest(shared_data) -> dict:
    return json.loads((shared_data / "manifest.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight SAM2.1 tiny checkpoint in the official format."""
    import torch

    from polypsam.sam2_adapter.model import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(TINY_CONFIG, None, "cpu")
    path = save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny_random.pt")
    del model
    return path


@pytest.fixture(scope="session")
def engine(tiny_checkpoint):
    """An in-process SAM2 engine on the random-weight tiny checkpoint at a small image size."""
    from polypsam.engines import engine_for

    eng = engine_for(tiny_checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def module_engine(tiny_checkpoint):
    """An engine built the way the Slicer module builds it: settings → EngineCache (worker thread)."""
    from polypsam.engines import EngineCache, EngineSettings

    cache = EngineCache()
    settings = EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(tiny_checkpoint),
                              device="cpu", image_size=TEST_IMAGE_SIZE)
    engine = cache.get(settings)
    assert cache.get(settings) is engine, "same settings reuse the loaded engine"
    yield engine
    cache.close()


def synthetic_rgb(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    """An RGB frame with a bright disc (a stand-in polyp) on a textured background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height * 0.5) ** 2 + (xx - width * 0.4) ** 2 < (min(height, width) * 0.2) ** 2
    img = rng.integers(40, 90, size=(height, width, 3)).astype(np.uint8)
    img[disc] = (200, 120, 110)
    return img
from slicer_fixtures import *  # noqa: E402,F401,F403
