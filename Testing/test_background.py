"""The model work runs in a worker thread while the calling (UI) thread keeps serving events.

Unit tests of :mod:`polypsam.background`, then the Slicer operations run through it on real MRML
(slicer-core) with the real SAM2 engine: the engine runs on the worker thread, the scene is read
and written on the calling thread, results equal a run on the calling thread, and Cancel from
the calling thread leaves the segmentation untouched.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from polypsam.background import ProgressRelay, run_in_worker
from polypsam.engine import CancelToken
from polypsam.errors import CancelledError, InvalidInputError
from slicer_fixtures import add_rgb_video, add_roi_on_ijk, run_action, run_in_background

MODULE_DIR = Path(__file__).resolve().parents[1] / "PolypSAM"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


# -- run_in_worker / ProgressRelay ---------------------------------------------------------------
def test_result_comes_back_and_work_runs_on_another_thread():
    caller = threading.get_ident()
    seen = {}

    def work():
        seen["thread"] = threading.get_ident()
        time.sleep(0.3)
        return 42

    pumps = []
    assert run_in_worker(work, while_waiting=lambda: pumps.append(threading.get_ident()),
                         interval_s=0.02) == 42
    assert seen["thread"] != caller
    assert len(pumps) >= 3, "the calling thread kept serving while the work ran"
    assert set(pumps) == {caller}


def test_error_in_work_is_raised_unchanged_on_the_calling_thread():
    def work():
        raise InvalidInputError("slice range 3..1 is inverted")

    with pytest.raises(InvalidInputError, match="inverted"):
        run_in_worker(work, while_waiting=lambda: None, interval_s=0.01)


def test_error_in_while_waiting_waits_for_the_work_to_stop():
    token = CancelToken()
    stopped = threading.Event()

    def work():
        try:
            while True:
                token.raise_if_cancelled()
                time.sleep(0.01)
        finally:
            stopped.set()

    def pump():
        token.cancel()
        raise KeyboardInterrupt

    with pytest.raises(CancelledError):  # the work's own outcome wins; it ended first
        run_in_worker(work, while_waiting=pump, interval_s=0.01)
    assert stopped.is_set()


def test_progress_relay_hands_over_the_latest_value_once():
    relay = ProgressRelay()
    assert relay.take() is None
    threads = [threading.Thread(target=relay, args=(i, 10, f"frame {i}")) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done, total, message = relay.take()
    assert total == 10 and message == f"frame {done}"
    assert relay.take() is None
    relay(10, 10, "writing")
    assert relay.take() == (10, 10, "writing")


# -- operations through the worker, real MRML and real SAM2 -----------------------------------
class ThreadLog:
    """Records which threads ran the image encoder and the scene writes."""

    def __init__(self, engine) -> None:
        self.encoder: set[int] = set()
        self.writes: set[int] = set()
        self._handle = engine.model.image_encoder.register_forward_pre_hook(self._on_encode)

    def _on_encode(self, module, inputs) -> None:
        self.encoder.add(threading.get_ident())

    def on_write(self, segmentation_node) -> None:
        self.writes.add(threading.get_ident())

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def thread_log(engine, monkeypatch):
    """Threads that encoded, wrote the scene, and read voxels from MRML nodes."""
    from polypsam.mrml import history, volumes

    log = ThreadLog(engine)
    log.reads = set()
    read = volumes._voxels

    def logged_read(node, what):
        log.reads.add(threading.get_ident())
        return read(node, what)

    monkeypatch.setattr(volumes, "_voxels", logged_read)
    history.add_before_write_hook(log.on_write)
    yield log
    history.remove_before_write_hook(log.on_write)
    log.remove()


def _lesion_scene(scene, seed: int):
    from slicer_fixtures import add_volume

    rng = np.random.default_rng(seed)
    kk, yy, xx = np.mgrid[:9, :48, :48]
    array = rng.normal(-150, 20, size=(9, 48, 48)).astype(np.int16)
    array[(kk - 4) ** 2 / 9 + (yy - 24) ** 2 / 64 + (xx - 22) ** 2 / 64 < 1] = 70
    volume = add_volume(scene, array, name="ct")
    roi = add_roi_on_ijk(scene, volume, (22, 24, 4), (20, 20, 5), "Lesion")
    return array, volume, roi


def test_propagate_in_worker_equals_a_foreground_run(slicer_scene, engine, thread_log):
    from polypsam import mrml

    _, volume, roi = _lesion_scene(slicer_scene, seed=21)
    seg_front = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "front")
    run_action("propagate", engine, input_node=volume, rois=[roi], segmentation_node=seg_front,
               window_preset="abdomen")
    front = mrml.export_segment_labelmap(seg_front, volume)

    caller = threading.get_ident()
    thread_log.encoder.clear()
    thread_log.writes.clear()
    relay = ProgressRelay()
    seen = []

    def pump():
        update = relay.take()
        if update is not None:
            seen.append(update)

    seg_back = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "back")
    # The 2-D and video caches would let the second run skip encodings: start cold.
    engine._cache.clear()
    engine._backbones.clear()
    result = run_in_background("propagate", engine, input_node=volume, rois=[roi],
                               segmentation_node=seg_back, window_preset="abdomen", progress=relay,
                               while_waiting=pump, interval_s=0.01)
    back = mrml.export_segment_labelmap(seg_back, volume)
    np.testing.assert_array_equal(back, front)
    assert set(result.segment_ids) == {"Lesion"}
    assert thread_log.encoder and caller not in thread_log.encoder, "SAM2 ran on the worker"
    assert thread_log.writes == {caller}, "the scene was written on the calling thread"
    assert seen, "progress reached the calling thread while the worker ran"
    assert mrml.read_provenance(seg_back, "Lesion")["operation"] == "propagate"


def test_cancel_from_the_calling_thread_leaves_segments_untouched(slicer_scene, engine, thread_log):
    from polypsam import mrml

    array, volume, roi = _lesion_scene(slicer_scene, seed=22)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    before = np.zeros(array.shape, dtype=bool)
    before[2:7, 20:30, 15:25] = True
    mrml.write_mask_to_segment(seg, "Lesion", before, volume)
    token = CancelToken()
    relay = ProgressRelay()

    def pump():  # the user presses Cancel once the first slice is reported
        if relay.take() is not None:
            token.cancel()

    engine._cache.clear()
    engine._backbones.clear()
    with pytest.raises(CancelledError):
        run_in_background("propagate", engine, input_node=volume, rois=[roi], segmentation_node=seg,
                          window_preset="abdomen", progress=relay, cancel=token,
                          while_waiting=pump, interval_s=0.005)
    assert thread_log.writes == set(), "nothing was written"
    np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume) == 1, before)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1


def test_segment_and_track_in_worker(slicer_scene, slicer_core, engine, thread_log):
    from conftest import synthetic_rgb

    caller = threading.get_ident()
    browser = add_rgb_video(slicer_scene, [synthetic_rgb(64, 80, seed=30 + t) for t in range(3)],
                            selected=1)
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    roi = add_roi_on_ijk(slicer_scene, proxy, (32, 32, 0), (24, 24, 1), "Polyp")
    seg2d = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "frame seg")
    run_in_background("segment", engine, input_node=proxy, rois=[roi], segmentation_node=seg2d)
    assert seg2d.GetSegmentation().GetNumberOfSegments() == 1
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    result = run_in_background("track", engine, browser_node=browser, rois=[roi], segmentation_node=seg)
    assert "3 frame" in result.summary
    assert browser.GetSequenceNode(seg).GetNumberOfDataNodes() == 3
    assert caller not in thread_log.encoder and thread_log.writes == {caller}
    assert thread_log.reads == {caller}, "frames were read from MRML on the calling thread only"


def test_engine_worker_is_one_persistent_thread():
    """Every run of one engine happens on the same thread (GPU libraries keep per-thread state)."""
    from polypsam.background import EngineWorker

    worker = EngineWorker()
    try:
        threads = {worker.run(threading.get_ident, interval_s=0.001) for _ in range(4)}
        assert len(threads) == 1 and threading.get_ident() not in threads
    finally:
        worker.close()


def test_engine_cache_loads_and_runs_on_its_worker(tiny_checkpoint):
    from polypsam.engines import EngineCache, EngineSettings

    cache = EngineCache()
    try:
        loaded_on = []
        settings = EngineSettings(model="sam2.1_hiera_tiny", checkpoint=str(tiny_checkpoint),
                                  device="cpu", image_size=256)
        engine = cache.get(settings, while_waiting=lambda: loaded_on.append(threading.get_ident()))
        assert cache.get(settings) is engine
        worker_thread = cache.worker.run(threading.get_ident)
        assert worker_thread != threading.get_ident()
        assert cache.worker.run(lambda: engine.segment_2d(np.zeros((32, 32), np.int16) + np.arange(32),
                                                          [(4, 4, 20, 20)])[0].mask.shape) == (32, 32)
    finally:
        cache.close()
    assert cache.engine is None
