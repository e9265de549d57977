"""Video frames in sequences and per-frame segmentations synchronised with the browser."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import add_rgb_video, add_volume, add_volume_sequence

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


def test_undo_keeps_the_replaced_segmentations_not_a_copy(slicer_core, slicer_scene):
    """A second write into a browsed sequence: the undo step holds the very stored segmentations
    the write took out of the sequence (no copy of the sequence is made), and undo puts back
    exactly what was there, also on the frame the proxy shows (which shares its segmentation with
    the stored one after browsing) and with a segment the second write added."""
    from polypsam.mrml.segments import segment_names

    browser, _ = make_video(slicer_scene)
    logic = slicer_core.logics["sequences"]
    logic.UpdateProxyNodesFromSequences(browser)
    seg_node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tracked")
    seg_node.CreateDefaultDisplayNodes()
    step = mrml.save_sequence_state_for_undo(seg_node, browser)
    seq = mrml.write_tracked_masks_to_sequence(browser, seg_node, {t: square(t) for t in range(N)},
                                               undo=step)
    for t in [*range(N), 2]:  # browse: the proxy ends up sharing frame 2's stored segmentation
        browser.SetSelectedItemNumber(t)
        logic.UpdateProxyNodesFromSequences(browser)
    assert seg_node.GetSegmentation() is seq.GetNthDataNode(2).GetSegmentation()
    stored = [seq.GetNthDataNode(t) for t in range(N)]
    step = mrml.save_sequence_state_for_undo(seg_node, browser)
    mrml.write_tracked_masks_to_sequence(browser, seg_node, {t: {"Other": square((t + 1) % N)}
                                                             for t in range(N)}, undo=step)
    assert all(step.old_items[seq.GetNthIndexValue(t)] is stored[t] for t in range(N)), "held, not copied"
    assert all(seq.GetNthDataNode(t) is not stored[t] for t in range(N))
    assert segment_names(seg_node) == ["Polyp", "Other"] and segment_names(stored[2]) == ["Polyp"]
    assert np.array_equal(proxy_mask(seg_node, "Other"), square(3))
    assert mrml.undo(seg_node)
    for t in range(N):
        assert segment_names(seq.GetNthDataNode(t)) == ["Polyp"], t
    assert segment_names(seg_node) == ["Polyp"]
    assert np.array_equal(proxy_mask(seg_node), square(2)), "the proxy shows the restored frame"
    browser.SetSelectedItemNumber(3)
    logic.UpdateProxyNodesFromSequences(browser)
    assert np.array_equal(proxy_mask(seg_node), square(3))


def test_undo_keeps_at_most_two_versions_of_a_sequence(slicer_scene):
    """Tracking the same output again and again: undo goes back two versions of the sequence (each
    step holding one version), not ten; older steps are dropped with them."""
    from polypsam.mrml.history import MAX_SEQUENCE_VERSIONS

    assert MAX_SEQUENCE_VERSIONS == 2
    browser, _ = make_video(slicer_scene)
    seg_node = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tracked")
    seg_node.CreateDefaultDisplayNodes()
    for version in range(4):  # version v: frame t holds square((t + v) % N)
        step = mrml.save_sequence_state_for_undo(seg_node, browser)
        seq = mrml.write_tracked_masks_to_sequence(
            browser, seg_node, {t: square((t + version) % N) for t in range(N)}, undo=step)

    frame = browser.GetMasterSequenceNode().GetNthDataNode(0)

    def stored_version():
        masks = [mrml.export_segment_labelmap(seq.GetNthDataNode(t), frame, ["Polyp"])[0] > 0
                 for t in range(N)]
        return next(v for v in range(4) if all(np.array_equal(m, square((t + v) % N))
                                               for t, m in enumerate(masks)))

    assert stored_version() == 3
    assert mrml.undo(seg_node) and stored_version() == 2
    assert mrml.undo(seg_node) and stored_version() == 1
    assert not mrml.undo(seg_node), "the steps before the two kept versions are gone"
    assert browser.GetSequenceNode(seg_node) is seq


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


# -- 4-D sequences (one 3-D volume per time point) -------------------------------------------
def oblique_flipped_ijk_to_ras():
    from slicer_fixtures import rotation

    matrix = np.eye(4)
    matrix[:3, :3] = rotation("z", 30) @ np.diag([-0.8, 0.7, 2.5])
    matrix[:3, 3] = (12.0, -40.0, 7.5)
    return matrix


def test_volumes_from_a_4d_sequence(slicer_scene):
    volumes = [np.random.default_rng(t).integers(-100, 200, (5, H, W)).astype(np.int16) for t in range(3)]
    browser = add_volume_sequence(slicer_scene, volumes, oblique_flipped_ijk_to_ras())
    assert mrml.sequence_holds_volumes(browser)
    seq = mrml.volumes_from_sequence(browser)
    assert len(seq) == 3 and seq.shape == (5, H, W)
    np.testing.assert_array_equal(seq[2], volumes[2])
    through_time = seq.slices(4)
    assert len(through_time) == 3
    np.testing.assert_array_equal(through_time[1], volumes[1][4])
    with pytest.raises(InvalidInputError, match="slice 5 is outside"):
        seq.slices(5)
    with pytest.raises(InvalidInputError, match="holds 3-D volumes"):
        mrml.frames_from_sequence(browser)
    video, _ = make_video(slicer_scene)
    assert not mrml.sequence_holds_volumes(video)


def test_4d_time_points_on_other_grids_are_rejected(slicer_scene):
    volumes = [np.zeros((4, H, W), np.int16) for _ in range(2)]
    browser = add_volume_sequence(slicer_scene, volumes)
    moved = browser.GetMasterSequenceNode().GetNthDataNode(1)
    moved.SetOrigin(0, 0, 1.0)
    with pytest.raises(InvalidInputError, match="time point 1 .* another grid .* origin, spacing or axes"):
        mrml.volumes_from_sequence(browser)
    resized = add_volume_sequence(slicer_scene, [np.zeros((4, H, W)), np.zeros((5, H, W))], name="b")
    with pytest.raises(InvalidInputError, match=r"another grid .* size \(32, 24, 5\), not \(32, 24, 4\)"):
        mrml.volumes_from_sequence(resized)


def test_4d_masks_are_written_per_time_point_in_physical_space(slicer_core, slicer_scene, tmp_path):
    import SimpleITK as sitk
    import slicer

    volumes = [np.zeros((5, H, W), np.int16) for _ in range(3)]
    ijk_to_ras = oblique_flipped_ijk_to_ras()
    browser = add_volume_sequence(slicer_scene, volumes, ijk_to_ras, selected=0,
                                  logic=slicer_core.logics["sequences"])
    masks = {}
    for t in range(3):
        mask = np.zeros((5, H, W), bool)
        mask[1 + t % 3, 5:12, 4 + 5 * t: 10 + 5 * t] = True
        masks[t] = mask
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    seq = mrml.write_tracked_masks_to_sequence(browser, seg, masks, segment="Lesion")
    assert seq.GetNumberOfDataNodes() == 3
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    for t in (2, 1):
        browser.SetSelectedItemNumber(t)
        slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
        labels = mrml.export_segment_labelmap(seg, proxy, ["Lesion"])
        np.testing.assert_array_equal(labels > 0, masks[t])
    # physical space: time point 2's stored segmentation, saved as .seg.nrrd and read by
    # SimpleITK (LPS), holds the mask exactly at the RAS points its IJK-to-RAS gives
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "t2.seg.nrrd"))
    assert storage.WriteData(seq.GetNthDataNode(2))
    image = sitk.ReadImage(str(tmp_path / "t2.seg.nrrd"))
    data = sitk.GetArrayFromImage(image)
    data = data[..., 0] if data.ndim == 4 else data
    kji = np.argwhere(np.ones((5, H, W), bool))
    lps = (np.diag([-1.0, -1.0, 1.0]) @ ((ijk_to_ras[:3, :3] @ kji[:, ::-1].T).T + ijk_to_ras[:3, 3]).T).T
    found = np.zeros(len(kji), bool)
    for n, point in enumerate(lps):
        index = image.TransformPhysicalPointToIndex(point.tolist())
        if all(0 <= index[a] < image.GetSize()[a] for a in range(3)):
            found[n] = data[index[2], index[1], index[0]] > 0
    np.testing.assert_array_equal(found.reshape(5, H, W), masks[2])
