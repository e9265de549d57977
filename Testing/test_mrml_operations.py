"""What the module's buttons do (polypsam.mrml operations, scene, tracking, undo) on real slicer-core scenes."""

from __future__ import annotations


import numpy as np
import pytest
from slicer_fixtures import add_rgb_video, add_roi_on_ijk, run_action

from polypsam import mrml as library
from polypsam.mrml import history, scene


# -- operations on real MRML (slicer-core) ---------------------------------------------------------
def _rgb_frame_node(scene, rgb):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(node, rgb[None])
    return node


def test_add_box_puts_the_views_in_place_mode_for_a_new_roi(slicer_scene, slicer_core):
    import vtk

    from conftest import synthetic_rgb

    selection, interaction = slicer_core.app.GetSelectionNode(), slicer_core.app.GetInteractionNode()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    browser = add_rgb_video(slicer_scene, [synthetic_rgb(16, 16, seed=t) for t in range(9)], selected=2)
    first = scene.place_box(slicer_scene, selection, interaction)
    second = scene.place_box(slicer_scene, selection, interaction, browser=browser)
    assert second.GetAttribute(library.FRAME_ATTRIBUTE) is None, "not placed yet"
    browser.SetSelectedItemNumber(7)  # the user moves to frame 7, then draws the box
    second.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 0.0))
    assert first.IsA("vtkMRMLMarkupsROINode") and first.GetDisplayNode() is not None
    assert first.GetName() != second.GetName() and first.GetName().startswith("Polyp")
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert selection.GetActivePlaceNodeID() == second.GetID()
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert not interaction.GetPlaceModePersistence()
    assert first.GetAttribute(library.FRAME_ATTRIBUTE) is None
    assert second.GetAttribute(library.FRAME_ATTRIBUTE) == "7"
    assert first.GetNumberOfControlPoints() == 0  # drawn by the user's click-drag
    browser.SetSelectedItemNumber(4)
    assert second.GetAttribute(library.FRAME_ATTRIBUTE) == "7", "the frame it was placed on stays"
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)


def test_new_segmentation_takes_the_input_geometry(slicer_scene):
    import slicer
    import vtk

    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros((5, 6, 7), dtype=np.int16))
    volume.SetSpacing(0.7, 0.8, 2.5)
    volume.SetOrigin(10, -20, 30)
    seg = scene.new_segmentation(slicer_scene, volume)
    assert seg.GetDisplayNode() is not None and seg.GetName().startswith("PolypSAM")
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    numbers = [float(v) for v in geometry.split(";") if v]  # IJK→RAS (row-major), then the extent
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    assert numbers[:16] == pytest.approx([ijk_to_ras.GetElement(r, c) for r in range(4) for c in range(4)])
    assert numbers[16:] == [0, 6, 0, 5, 0, 4]
    assert scene.new_segmentation(slicer_scene).GetName() != seg.GetName()


def test_segment_2d_on_rgb_frame_writes_named_segments(slicer_scene, module_engine):
    from polypsam import mrml

    from conftest import synthetic_rgb

    rgb = synthetic_rgb(96, 128)
    frame = _rgb_frame_node(slicer_scene, rgb)
    rois = [add_roi_on_ijk(slicer_scene, frame, (51, 48, 0), (40, 40, 1), "Polyp A"),
            add_roi_on_ijk(slicer_scene, frame, (100, 30, 0), (20, 20, 1), "Polyp B")]
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    steps = []
    result = run_action("segment", module_engine, input_node=frame, rois=rois, segmentation_node=seg,
                        progress=lambda d, t, m: steps.append((d, t)))
    assert sorted(result.segment_ids) == ["Polyp A", "Polyp B"]
    assert steps[-1][0] == steps[-1][1]
    labels = mrml.export_segment_labelmap(seg, frame)
    assert labels.shape == (1, 96, 128)
    tags = mrml.read_provenance(seg, "Polyp A")
    assert tags["operation"] == "segment" and tags["key_slice"] == "0"
    assert tags["checkpoint_sha256"] == module_engine.info.checkpoint_sha256
    assert mrml.undo(seg) and seg.GetSegmentation().GetNumberOfSegments() == 0


def test_segment_2d_on_volume_replaces_only_the_key_slice(slicer_scene, module_engine):
    from polypsam import mrml
    from slicer_fixtures import add_volume

    array = np.full((8, 48, 56), -200, dtype=np.int16)
    array[2:6, 14:34, 16:38] = 80
    volume = add_volume(slicer_scene, array, name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (27, 24, 4), (24, 22, 1), "Lesion")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    prior = np.zeros(array.shape, dtype=bool)
    prior[1, 5:10, 5:10] = True  # something on another slice of the same segment
    mrml.write_mask_to_segment(seg, "Lesion", prior, volume)
    run_action("segment", module_engine, input_node=volume, rois=[roi], segmentation_node=seg,
               window_preset="abdomen")
    labels = mrml.export_segment_labelmap(seg, volume, ["Lesion"])
    assert labels[1, 5:10, 5:10].all(), "other slices of the segment are kept"
    assert mrml.read_provenance(seg, "Lesion")["key_slice"] == "4"


def test_failed_run_leaves_segments_untouched(slicer_scene, module_engine):
    from polypsam import mrml
    from polypsam.engine import CancelToken
    from polypsam.errors import CancelledError, InvalidInputError
    from slicer_fixtures import add_volume

    array = np.zeros((4, 32, 32), dtype=np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    keep = np.zeros(array.shape, dtype=bool)
    keep[2, 3:8, 3:8] = True
    mrml.write_mask_to_segment(seg, "Existing", keep, volume)
    before = mrml.export_segment_labelmap(seg, volume).copy()
    inside = add_roi_on_ijk(slicer_scene, volume, (16, 16, 2), (12, 12, 1), "Polyp")
    outside = add_roi_on_ijk(slicer_scene, volume, (500, 500, 2), (12, 12, 1), "Far")
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(CancelledError):
        run_action("segment", module_engine, input_node=volume, rois=[inside], segmentation_node=seg,
                   cancel=cancel)
    with pytest.raises(InvalidInputError):
        run_action("segment", module_engine, input_node=volume, rois=[inside, outside],
                   segmentation_node=seg)
    with pytest.raises(InvalidInputError, match="no box"):
        run_action("segment", module_engine, input_node=volume, rois=[], segmentation_node=seg)
    with pytest.raises(InvalidInputError, match="no input"):
        run_action("segment", module_engine, input_node=None, rois=[inside], segmentation_node=seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(mrml.export_segment_labelmap(seg, volume), before)


def test_before_write_hook_lets_another_undo_history_revert_the_write(slicer_scene, module_engine):
    """The widget registers the Segment Editor's saveStateForUndo as a before-write hook; here a
    second vtkSegmentationHistory (the class the Segment Editor's undo uses) stands in for it."""
    import slicer

    from polypsam import mrml
    from slicer_fixtures import add_volume

    array = np.full((3, 40, 48), -100, dtype=np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    existing = np.zeros(array.shape, dtype=bool)
    existing[0, 2:6, 2:6] = True
    mrml.write_mask_to_segment(seg, "Existing", existing, volume)
    editor_history = slicer.vtkSegmentationHistory()
    editor_history.SetSegmentation(seg.GetSegmentation())
    seen = []

    def hook(node):
        seen.append(node.GetSegmentation().GetNumberOfSegments())
        editor_history.SaveState()

    history.add_before_write_hook(hook)
    try:
        roi = add_roi_on_ijk(slicer_scene, volume, (24, 20, 1), (20, 16, 1), "Lesion")
        run_action("segment", module_engine, input_node=volume, rois=[roi], segmentation_node=seg)
        bad = add_roi_on_ijk(slicer_scene, volume, (900, 900, 1), (10, 10, 1), "Far")
        with pytest.raises(Exception):
            run_action("segment", module_engine, input_node=volume, rois=[bad], segmentation_node=seg)
    finally:
        history.remove_before_write_hook(hook)
    assert seen == [1], "called once, before the write, and not for the failed run"
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    assert editor_history.RestorePreviousState()
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    assert np.array_equal(mrml.export_segment_labelmap(seg, volume) > 0, existing)


def test_display_window_is_read_not_written(slicer_scene):
    from polypsam.preprocess import Window
    from slicer_fixtures import add_volume

    array = (np.arange(4 * 16 * 16).reshape(4, 16, 16) % 300).astype(np.int16)
    volume = add_volume(slicer_scene, array, name="ct")
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(350, 50)
    assert library.intensity_for(volume, "display") == Window(50, 350)
    assert library.intensity_for(volume, "lung") == Window(-600, 1500)
    import slicer

    assert np.array_equal(slicer.util.arrayFromVolume(volume), array)


def _lesion_volume(scene):
    from slicer_fixtures import add_volume

    kk, yy, xx = np.mgrid[:10, :48, :48]
    array = np.full((10, 48, 48), -150, dtype=np.int16)
    array[(kk - 5) ** 2 / 9 + (yy - 24) ** 2 / 64 + (xx - 22) ** 2 / 64 < 1] = 70
    return array, add_volume(scene, array, name="ct")


def test_propagate_writes_only_the_slice_range_and_keeps_other_segments(slicer_scene, module_engine):
    from polypsam import mrml

    array, volume = _lesion_volume(slicer_scene)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    other = np.zeros(array.shape, dtype=bool)
    other[0, 1:6, 1:6] = True
    mrml.write_mask_to_segment(seg, "Other", other, volume)
    outside = np.zeros(array.shape, dtype=bool)
    outside[9, 30:40, 30:40] = True
    mrml.write_mask_to_segment(seg, "Lesion", outside, volume)
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 24, 5), (20, 20, 5), "Lesion")
    steps = []
    result = run_action("propagate", module_engine, input_node=volume, rois=[roi], segmentation_node=seg,
                        window_preset="abdomen", progress=lambda d, t, m: steps.append((d, t)))
    assert set(result.segment_ids) == {"Lesion"}
    assert steps and steps[-1][0] == steps[-1][1]
    labels = mrml.export_segment_labelmap(seg, volume, ["Other", "Lesion"])
    assert (labels[0, 1:6, 1:6] == 1).all(), "another segment is untouched"
    assert (labels[9, 30:40, 30:40] == 2).all(), "slices outside the range are kept"
    tags = mrml.read_provenance(seg, "Lesion")
    assert tags["operation"] == "propagate" and tags["key_slice"] == "5"
    assert tags["slice_range"] == "3,7"


def test_refine_volume_uses_extra_boxes_as_conditioning(slicer_scene, module_engine):
    from polypsam import mrml

    array, volume = _lesion_volume(slicer_scene)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    first = add_roi_on_ijk(slicer_scene, volume, (22, 24, 5), (20, 20, 1), "Lesion")
    extra = add_roi_on_ijk(slicer_scene, volume, (22, 24, 3), (14, 14, 1), "extra box")
    run_action("refine", module_engine, input_node=volume, rois=[first, extra], segmentation_node=seg,
               window_preset="abdomen")
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    tags = mrml.read_provenance(seg, "Lesion")
    assert tags["operation"] == "refine" and tags["refinement_slices"] == "3"
    assert tags["slice_range"] == "3,5"


def test_track_writes_a_synchronised_segmentation_sequence(slicer_scene, slicer_core, module_engine):

    from conftest import synthetic_rgb

    browser = add_rgb_video(slicer_scene, [synthetic_rgb(64, 80, seed=t) for t in range(4)],
                            selected=1)
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    assert proxy is not None
    roi = add_roi_on_ijk(slicer_scene, proxy, (32, 32, 0), (24, 24, 1), "Polyp")
    roi.SetAttribute(library.FRAME_ATTRIBUTE, "1")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    result = run_action("track", module_engine, browser_node=browser, rois=[roi], segmentation_node=seg)
    assert "4 frame" in result.summary
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq is not None and seg_seq.GetNumberOfDataNodes() == 4


class _CallCounter:
    """The real engine, counting calls (and the slices/frames handed to each track call)."""

    def __init__(self, engine):
        self.engine, self.segment_2d_calls, self.track_frames = engine, 0, []

    @property
    def info(self):
        return self.engine.info

    def segment_2d(self, *args, **kwargs):
        self.segment_2d_calls += 1
        return self.engine.segment_2d(*args, **kwargs)

    def track(self, frames, prompts, *args, **kwargs):
        self.track_frames.append(len(frames))
        return self.engine.track(frames, prompts, *args, **kwargs)


def _ct_4d(slicer_scene, slicer_core, n_times=3, selected=1):
    """A 4-D CT (7 x 40 x 48 per time point, oblique 0.8/0.9/2.5 mm) whose lesion moves in I."""
    from slicer_fixtures import add_volume_sequence, rotation

    kk, jj, ii = np.mgrid[:7, :40, :48]
    volumes = []
    for t in range(n_times):
        array = np.full((7, 40, 48), -80, np.int16)
        array[((kk - 3) / 2.0) ** 2 + ((jj - 20) / 7.0) ** 2 + ((ii - 18 - 3 * t) / 7.0) ** 2 < 1] = 70
        volumes.append(array)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation("z", 20) @ np.diag([0.8, -0.9, 2.5])
    ijk_to_ras[:3, 3] = (5.0, 30.0, -12.0)
    browser = add_volume_sequence(slicer_scene, volumes, ijk_to_ras, selected=selected,
                                  logic=slicer_core.logics["sequences"])
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    assert proxy is not None and proxy.IsA("vtkMRMLScalarVolumeNode")
    return browser, proxy, volumes


def _sequence_labels(seg_seq, name, reference, n_times):
    from polypsam import mrml

    out = []
    for t in range(n_times):
        stored = seg_seq.GetNthDataNode(t)
        out.append(mrml.export_segment_labelmap(stored, reference, [name]) > 0
                   if stored.GetSegmentation().GetSegmentIdBySegmentName(name) else None)
    return out


def test_track_4d_ct_tracks_the_key_slice_through_time_then_propagates_each_time_point(
        slicer_scene, slicer_core, module_engine):
    from polypsam import mrml

    browser, proxy, volumes = _ct_4d(slicer_scene, slicer_core)
    roi = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")  # slices 2..4
    roi.SetAttribute(library.FRAME_ATTRIBUTE, "1")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    engine = _CallCounter(module_engine)
    steps = []
    result = run_action("track", engine, browser_node=browser, rois=[roi], segmentation_node=seg,
                        window_preset="abdomen", progress=lambda d, t, m: steps.append((d, t)))
    assert "3 time point(s) in 3-D" in result.summary
    assert steps[-1][0] == steps[-1][1] and all(d <= t for d, t in steps)
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq is not None and seg_seq.GetNumberOfDataNodes() == 3
    # the key slice through time first (3 frames, from time point 1 both ways), then one 3-D
    # propagation (segment_2d on the key slice, tracking within slices 2..4) per time point found
    # (random weights: the model finds something at every time point here). The worker holds
    # only the ROI's slices 2..4 of each time point, read on the main thread before it starts.
    labels = _sequence_labels(seg_seq, "Lesion", proxy, 3)
    found = [t for t, mask in enumerate(labels) if mask is not None and mask.any()]
    assert found == [0, 1, 2]
    assert engine.segment_2d_calls == 1 + len(found)
    assert engine.track_frames == [3, 3] + [3, 3] * len(found)
    for t in found:
        assert labels[t].shape == volumes[t].shape and labels[t][3].any()
        assert not labels[t][:2].any() and not labels[t][5:].any(), "only the ROI's slices 2..4"
    tags = mrml.read_provenance(seg_seq.GetNthDataNode(1), "Lesion")
    assert tags["operation"] == "track" and tags["key_slice"] == "3"
    assert tags["slice_range"] == "2,4" and tags["start_frame"] == "1" and tags["frame"] == "1"


def test_refine_4d_ct_uses_a_box_on_another_time_point(slicer_scene, slicer_core, module_engine):
    from polypsam import mrml

    browser, proxy, _ = _ct_4d(slicer_scene, slicer_core, selected=0)
    first = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")
    first.SetAttribute(library.FRAME_ATTRIBUTE, "0")
    extra = add_roi_on_ijk(slicer_scene, proxy, (24, 20, 3), (16, 16, 1), "extra box")
    extra.SetAttribute(library.FRAME_ATTRIBUTE, "2")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    run_action("refine", module_engine, input_node=proxy, rois=[first, extra], segmentation_node=seg,
               browser_node=browser)
    seg_seq = browser.GetSequenceNode(seg)
    assert seg_seq.GetNumberOfDataNodes() == 3
    tags = mrml.read_provenance(seg_seq.GetNthDataNode(0), "Lesion")
    assert tags["operation"] == "refine" and tags["refinement_frames"] == "2"


def test_cancelled_4d_track_leaves_the_segmentation_untouched(slicer_scene, slicer_core, module_engine):
    from polypsam import mrml
    from polypsam.engine import CancelToken
    from polypsam.errors import CancelledError

    browser, proxy, volumes = _ct_4d(slicer_scene, slicer_core)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    before = np.zeros(volumes[0].shape, bool)
    before[0, 2:6, 2:6] = True
    mrml.write_mask_to_segment(seg, "Other", before, proxy)
    roi = add_roi_on_ijk(slicer_scene, proxy, (18, 20, 3), (18, 18, 3), "Lesion")
    cancel = CancelToken()

    def progress(done, total, message):
        if "in 3-D" in message:
            cancel.cancel()  # after the key slice was tracked, during the 3-D time points

    with pytest.raises(CancelledError):
        run_action("track", module_engine, browser_node=browser, rois=[roi], segmentation_node=seg,
                   progress=progress, cancel=cancel)
    assert browser.GetSequenceNode(seg) is None
    assert seg.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, proxy, ["Other"]) > 0, before)


def test_new_segmentation_sits_beside_the_volume_in_its_study(slicer_scene):
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer_scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    volume = slicer_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    slicer.util.updateVolumeFromArray(volume, np.zeros((3, 4, 5), dtype=np.int16))
    # desktop Slicer's subject hierarchy plugins add items for new nodes; slicer-core does not
    hierarchy.CreateItem(study, volume)
    seg = scene.new_segmentation(slicer_scene, volume)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(seg)) == study
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume.GetID()


def test_output_made_by_create_new_gets_display_nodes(slicer_scene, module_engine):
    """A selector's "Create new" adds a bare segmentation node: the run gives it a display."""
    from conftest import synthetic_rgb

    frame = _rgb_frame_node(slicer_scene, synthetic_rgb(48, 64, seed=3))
    roi = add_roi_on_ijk(slicer_scene, frame, (30, 24, 0), (20, 20, 1), "Polyp")
    bare = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "bare")
    assert bare.GetDisplayNode() is None
    library.run(library.Request("segment", input_node=frame, rois=[roi], segmentation_node=bare),
                module_engine)
    assert bare.GetDisplayNode() is not None


def test_streaming_volume_frame_is_read_through_its_image_data(slicer_scene, module_engine):
    """slicer.util.arrayFromVolume refuses vtkMRMLStreamingVolumeNode; PolypSAM reads it."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    from conftest import synthetic_rgb

    rgb = synthetic_rgb(40, 56, seed=4)
    image = vtk.vtkImageData()
    image.SetDimensions(56, 40, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(rgb.reshape(-1, 3).copy(), deep=1))
    node = slicer_scene.AddNewNodeByClass("vtkMRMLStreamingVolumeNode", "stream")
    node.SetAndObserveImageData(image)
    with pytest.raises(Exception):
        slicer.util.arrayFromVolume(node)
    from polypsam import mrml

    np.testing.assert_array_equal(mrml.frame_from_vector_node(node), rgb)
    roi = add_roi_on_ijk(slicer_scene, node, (28, 20, 0), (20, 16, 1), "Polyp")
    seg = scene.new_segmentation(slicer_scene, node)
    library.run(library.Request("segment", input_node=node, rois=[roi], segmentation_node=seg),
                module_engine)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1


def test_undo_after_track_restores_the_sequence_as_a_whole(slicer_scene, slicer_core, module_engine):
    """Track writes a segmentation sequence (save-changes on, which makes the Sequences logic swap
    the proxy's vtkSegmentation); one undo removes what the first Track created, and a second
    Track's undo puts the first Track's masks back on every frame."""
    from conftest import synthetic_rgb
    from polypsam import mrml

    browser = add_rgb_video(slicer_scene, [synthetic_rgb(48, 64, seed=40 + t) for t in range(3)],
                            selected=0)
    logic = slicer_core.logics["sequences"]
    logic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    roi = add_roi_on_ijk(slicer_scene, proxy, (30, 24, 0), (24, 20, 1), "Polyp")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    request = library.Request("track", browser_node=browser, rois=[roi], segmentation_node=seg)
    library.run(request, module_engine)
    first_seq = browser.GetSequenceNode(seg)
    assert first_seq is not None and first_seq.GetNumberOfDataNodes() == 3

    def stored_masks(sequence):
        out = []
        for t in range(sequence.GetNumberOfDataNodes()):
            node = sequence.GetNthDataNode(t)
            segmentation = node.GetSegmentation()
            sid = segmentation.GetSegmentIdBySegmentName("Polyp")
            labelmap = segmentation.GetSegment(sid).GetRepresentation("Binary labelmap")
            out.append(None if labelmap is None else labelmap.GetExtent())
        return out

    before_second = stored_masks(first_seq)
    for t in range(3):  # move through the frames: the proxy's vtkSegmentation is swapped
        browser.SetSelectedItemNumber(t)
        logic.UpdateProxyNodesFromSequences(browser)
    roi2 = add_roi_on_ijk(slicer_scene, proxy, (20, 20, 0), (12, 12, 1), "Polyp")
    library.run(library.Request("track", browser_node=browser, rois=[roi2], segmentation_node=seg),
                module_engine)
    assert mrml.undo(seg), "undo of the second Track"
    assert browser.GetSequenceNode(seg) is first_seq
    assert stored_masks(first_seq) == before_second, "the first Track's masks are back on every frame"
    assert mrml.undo(seg), "undo of the first Track"
    assert browser.GetSequenceNode(seg) is None, "the sequence the first Track created is gone"
    assert slicer_scene.GetNodeByID(first_seq.GetID()) is None
    assert seg.GetSegmentation().GetNumberOfSegments() == 0
    assert not mrml.undo(seg)


def test_load_video_makes_a_browsable_rgb_sequence(slicer_scene, slicer_core, tmp_path):
    import imageio.v3 as iio

    from conftest import synthetic_rgb
    from polypsam.mrml import video_files as video

    frames = np.stack([synthetic_rgb(48, 64, seed=t) for t in range(5)])
    path = tmp_path / "clip.mp4"
    iio.imwrite(path, frames, fps=10, codec="libx264", plugin="pyav")
    seen = []
    browser = video.load_video(slicer_scene, path, progress=lambda d, t: seen.append((d, t)))
    sequence = browser.GetMasterSequenceNode()
    assert sequence.GetNumberOfDataNodes() == 5 and seen[-1] == (5, 5)
    assert sequence.GetIndexName() == "time" and sequence.GetIndexUnit() == "s"
    assert [float(sequence.GetNthIndexValue(t)) for t in range(5)] == pytest.approx([0, .1, .2, .3, .4])
    from polypsam import mrml

    first = mrml.frame_from_vector_node(sequence.GetNthDataNode(0))
    assert first.shape == (48, 64, 3)
    # lossy codec: close to the source frame, not equal
    assert np.abs(first.astype(int) - frames[0].astype(int)).mean() < 12
    assert browser.GetProxyNode(sequence) is not None
    # a folder of frames: numbered by frame, bit-exact (PNG)
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, rgb in enumerate(frames[:3]):
        Image.fromarray(rgb).save(folder / f"f{t}.png")
    browser2 = video.load_video(slicer_scene, folder)
    seq2 = browser2.GetMasterSequenceNode()
    assert seq2.GetIndexName() == "frame" and seq2.GetNumberOfDataNodes() == 3
    np.testing.assert_array_equal(mrml.frame_from_vector_node(seq2.GetNthDataNode(2)), frames[2])


def test_load_video_stopped_adds_nothing(slicer_scene, tmp_path):
    from PIL import Image

    from conftest import synthetic_rgb
    from polypsam.errors import CancelledError
    from polypsam.mrml import video_files as video

    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(3):
        Image.fromarray(synthetic_rgb(16, 16, seed=t)).save(folder / f"{t}.png")
    count = slicer_scene.GetNumberOfNodes()

    def stop(done, total):
        if done == 2:
            raise CancelledError("stopped")

    with pytest.raises(CancelledError):
        video.load_video(slicer_scene, folder, progress=stop)
    assert slicer_scene.GetNumberOfNodes() == count


def test_segments_get_terminology_and_export_from_slicer(slicer_scene, module_engine, tmp_path):
    """PolypSAM segments carry coded terminology; the Export button's function writes them with
    names, colours, terminology and provenance, on the volume's grid (read back independently)."""
    import SimpleITK as sitk
    import slicerio

    from slicer_fixtures import add_volume, ijk_to_ras_matrix, rotation
    from polypsam.mrml import exporting
    from polypsam.terminology import TERMINOLOGY_PRESETS, parse_slicer_entry

    kk, yy, xx = np.mgrid[:6, :40, :44]
    array = np.full((6, 40, 44), -120, dtype=np.int16)
    array[(kk - 3) ** 2 / 4 + (yy - 20) ** 2 / 64 + (xx - 22) ** 2 / 64 < 1] = 80
    ijk_to_ras = ijk_to_ras_matrix((0.7, 0.8, 2.5), (10.0, -5.0, 30.0), rotation("z", 25))
    volume = add_volume(slicer_scene, array, ijk_to_ras, name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 20, 3), (18, 18, 3), "Lesion")
    seg = scene.new_segmentation(slicer_scene, volume)
    library.run(library.Request("propagate", input_node=volume, rois=[roi], segmentation_node=seg,
                                window_preset="abdomen"), module_engine)
    segment = seg.GetSegmentation().GetSegment(seg.GetSegmentation().GetSegmentIdBySegmentName("Lesion"))
    assert parse_slicer_entry(segment.GetTerminology()) == TERMINOLOGY_PRESETS["lesion"]
    from polypsam import mrml

    labels = mrml.export_segment_labelmap(seg, volume)
    out = exporting.export_segmentation(seg, volume, tmp_path / "lesion.seg.nrrd", "seg.nrrd")
    read = slicerio.read_segmentation(str(out.path))
    assert [s["name"] for s in read["segments"]] == ["Lesion"]
    assert read["segments"][0]["terminology"]["type"][1] == "52988006"
    nifti = exporting.export_segmentation(seg, volume, tmp_path / "lesion.nii.gz", "nifti")
    image = sitk.ReadImage(str(nifti.path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    lps = np.diag([-1.0, -1.0, 1.0]) @ ijk_to_ras[:3, 3]
    np.testing.assert_allclose(image.GetOrigin(), lps, atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.8, 2.5), atol=1e-5)
    import json

    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["provenance"]["checkpoint_sha256"] == module_engine.info.checkpoint_sha256
    assert sidecar["provenance"]["segments"]["Lesion"]["operation"] == "propagate"
    with pytest.raises(Exception, match="DICOM database"):
        exporting.export_segmentation(seg, volume, tmp_path / "x.dcm", "dicom-seg")
