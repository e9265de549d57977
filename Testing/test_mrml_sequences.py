"""Video frames in sequences and per-frame segmentations synchronised with the browser."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import add_rgb_video, add_volume

from polypsam.errors import InvalidInputError

mrml = pytest.importorskip("polypsam.mrml")

H, W, N = 24, 32, 4


def make_video(scene, sizes=None):
    """A browser over an RGB frame sequence; frame t has a bright square at column 4 + 5t."""
    sizes = sizes or [(H, W)] * N
    frames = []
    for t, (h, w) in enumerate(sizes):
        rgb = np.full((h, w, 3), 30, np.uint8)
        rgb[5:12, 4 + 5 * t : 10 + 5 * t] = (200, 100 + t, 90)
        frames.append(rgb)
    return add_rgb_video(scene, frames), frames


def square(t, h=H, w=W):
    mask = np.zeros((h, w), bool)
    mask[5:12, 4 + 5 * t : 10 + 5 * t] = True
    return mask


def proxy_mask(seg_node, name="Polyp"):
    import slicer

    segment_id = seg_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    frame_node = None
    for node in slicer.util.getNodesByClass("vtkMRMLVectorVolumeNode"):
        frame_node = node  # the browser's proxy frame
    return slicer.util.arrayFromSegmentBinaryLabelmap(seg_node, segment_id, frame_node)[0] > 0


def test_frames_from_sequence(slicer_scene):
    browser, frames = make_video(slicer_scene)
    source = mrml.frames_from_sequence(browser)
    assert len(source) == N and (source.height, source.width) == (H, W)
    for t in range(N):
        assert np.array_equal(source[t], frames[t])
    with pytest.raises(IndexError):
        source[N]


def test_mixed_frame_sizes_are_rejected(slicer_scene):
    browser, _ = make_video(slicer_scene, [(H, W), (H, W), (H + 2, W)])
    with pytest.raises(InvalidInputError, match="mixes frame sizes"):
        mrml.frames_from_sequence(browser)


def test_empty_browser_is_rejected(slicer_scene):
    browser = slicer_scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "empty")
    with pytest.raises(InvalidInputError, match="no frames"):
        mrml.frames_from_sequence(browser)


def test_tracked_masks_follow_the_browser_and_survive_seq_mrb(slicer_core, slicer_scene, tmp_path):
    browser, _ = make_video(slicer_scene)
    seg_node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tracked")
    seg_node.CreateDefaultDisplayNodes()
    masks = {t: square(t) for t in range(1, N)}  # frame 0 left empty
    seq = mrml.write_tracked_masks_to_sequence(
        browser, seg_node, masks, segment="Polyp", colors={"Polyp": (1.0, 0.0, 0.0)},
        provenance={"prompt_frame": 1},
    )
    assert seq.GetNumberOfDataNodes() == N
    assert browser.IsSynchronizedSequenceNode(seq.GetID())
    assert browser.GetProxyNode(seq) is seg_node

    assert not proxy_mask(seg_node).any()  # frame 0 selected: empty
    for t in range(1, N):
        browser.SetSelectedItemNumber(t)
        assert np.array_equal(proxy_mask(seg_node), square(t)), t
        tags = mrml.read_provenance(seg_node, "Polyp")
        assert tags["frame"] == str(t) and tags["prompt_frame"] == "1"

    # rewrite one frame: the sequence is updated in place, the others kept
    browser.SetSelectedItemNumber(2)
    mrml.write_tracked_masks_to_sequence(browser, seg_node, {3: square(0)})
    assert browser.GetSequenceNode(seg_node) is seq and seq.GetNumberOfDataNodes() == N
    assert np.array_equal(proxy_mask(seg_node), square(2))  # current frame keeps its mask
    browser.SetSelectedItemNumber(3)
    assert np.array_equal(proxy_mask(seg_node), square(0))

    path = str(tmp_path / "tracked.seq.mrb")
    seq.AddDefaultStorageNode()
    storage = seq.GetStorageNode()
    storage.SetFileName(path)
    assert storage.WriteData(seq)
    loaded = slicer_scene.AddNewNodeByClass("vtkMRMLSequenceNode", "reloaded")
    reader = slicer_scene.AddNewNodeByClass("vtkMRMLSequenceStorageNode")
    loaded.SetAndObserveStorageNodeID(reader.GetID())
    reader.SetFileName(path)
    assert reader.ReadData(loaded)
    assert loaded.GetNumberOfDataNodes() == N
    for t, expected in [(1, square(1)), (2, square(2)), (3, square(0))]:
        node = loaded.GetNthDataNode(t)
        segment_id = node.GetSegmentation().GetSegmentIdBySegmentName("Polyp")
        internal = np.asarray(__import__("slicer").util.arrayFromSegmentInternalBinaryLabelmap(node, segment_id))
        label = node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        assert (internal == label).sum() == expected.sum()


def test_bad_tracked_masks_change_nothing(slicer_scene):
    browser, _ = make_video(slicer_scene)
    seg_node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tracked")
    before = slicer_scene.GetNumberOfNodes()
    with pytest.raises(InvalidInputError, match="has shape"):
        mrml.write_tracked_masks_to_sequence(browser, seg_node, {0: square(0), 1: np.ones((H, W + 1), bool)})
    with pytest.raises(InvalidInputError, match="not an item"):
        mrml.write_tracked_masks_to_sequence(browser, seg_node, {N: square(0)})
    with pytest.raises(InvalidInputError, match="no masks"):
        mrml.write_tracked_masks_to_sequence(browser, seg_node, {})
    assert slicer_scene.GetNumberOfNodes() == before
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 0
    assert browser.GetSequenceNode(seg_node) is None


def test_frame_reader_accepts_scalar_single_slice(slicer_scene):
    grey = add_volume(slicer_scene, np.arange(H * W, dtype=np.uint8).reshape(1, H, W))
    assert mrml.frame_from_vector_node(grey).shape == (H, W, 3)
