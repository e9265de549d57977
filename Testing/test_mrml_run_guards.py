"""Issue 18 §3, set A, on slicer-core with the random-weight tiny SAM2: which frame's prompts
prompt a frame, runs whose nodes left the scene, candidates of an image that changed, inputs
checked before anything happens, and the output a segmentation sequence can use."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_fixtures import add_rgb_video, add_roi_on_ijk, add_volume, ijk_to_ras_matrix, run_action

pytestmark = pytest.mark.usefixtures("slicer_core")

N_FRAMES, HEIGHT, WIDTH = 5, 48, 64


def _video(slicer_scene, slicer_core, selected=1, seed=70, name="video"):
    from conftest import synthetic_rgb

    frames = [synthetic_rgb(HEIGHT, WIDTH, seed=seed + t) for t in range(N_FRAMES)]
    browser = add_rgb_video(slicer_scene, frames, selected=selected, name=name)
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    return browser, browser.GetProxyNode(browser.GetMasterSequenceNode()), frames


def _click(point_list, volume, x, y, k=0.0, frame=None):
    from polypsam.mrml import ijk_to_world

    n = point_list.AddControlPoint(*[float(v) for v in (ijk_to_world(volume) @ [x, y, k, 1.0])[:3]])
    if frame is not None:
        point_list.SetNthControlPointDescription(n, f"frame {frame}")


def _lesion(shape=(7, 40, 48), shift=0):
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]]
    array = np.full(shape, -120, dtype=np.int16)
    array[(kk - 3) ** 2 / 6 + (jj - 20) ** 2 / 60 + (ii - 22 - shift) ** 2 / 60 < 1] = 80
    return array


class _Recorder:
    """The real engine, recording every 2-D call's image and prompts and counting model calls."""

    def __init__(self, engine):
        self.engine, self.calls, self.tracks = engine, [], 0

    @property
    def info(self):
        return self.engine.info

    def segment_2d(self, image, prompts, **kwargs):
        self.calls.append((np.array(image), list(prompts)))
        return self.engine.segment_2d(image, prompts, **kwargs)

    def track(self, *args, **kwargs):
        self.tracks += 1
        yield from self.engine.track(*args, **kwargs)


# ---- bug 1: a click on a video frame prompts that frame only ---------------------------------


def test_clicks_on_a_video_frame_use_that_frames_clicks_only(slicer_scene, slicer_core, engine):
    """Each click records its frame; re-segmenting the frame shown takes its own clicks, not the
    clicks of every frame (every frame is slice 0 of the same grid)."""
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    browser, proxy, frames = _video(slicer_scene, slicer_core, selected=1)
    include, exclude = mrml.click_lists(slicer_scene, "Polyp")
    _click(include, proxy, 10.0, 12.0, frame=0)
    _click(exclude, proxy, 50.0, 40.0, frame=0)
    _click(include, proxy, 30.0, 20.0, frame=1)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    recorder = _Recorder(engine)
    fields = dict(input_node=proxy, browser_node=browser, segmentation_node=seg, segment="Polyp",
                  include=include, exclude=exclude)
    result = run_action("clicks", recorder, **fields)
    ((image, (prompt,)),) = recorder.calls
    np.testing.assert_array_equal(image, frames[1])
    assert (prompt.points, prompt.labels) == (((30.0, 20.0),), (1,)), "frame 1's click only"
    assert "from 1 click(s)" in result.summary

    browser.SetSelectedItemNumber(2)  # nothing was clicked on frame 2
    with pytest.raises(InvalidInputError, match="no clicks on frame 2"):
        run_action("clicks", recorder, **fields)
    assert len(recorder.calls) == 1


# ---- bug 2: each box on its own frame ----------------------------------------------------------


def test_video_track_prompts_each_box_on_its_own_frame(slicer_scene, slicer_core, engine):
    """Two boxes drawn on frames 0 and 3: each prompts the frame it was drawn on (4-D Track does
    the same per time point); both are written on every frame of one segmentation sequence."""
    from polypsam import mrml, propagation
    from polypsam.mrml.roi import FRAME_ATTRIBUTE, roi_to_voxel_box

    browser, proxy, frames = _video(slicer_scene, slicer_core, selected=0)
    first = add_roi_on_ijk(slicer_scene, proxy, (24, 22, 0), (20, 18, 1), "first")
    second = add_roi_on_ijk(slicer_scene, proxy, (44, 26, 0), (16, 16, 1), "second")
    first.SetAttribute(FRAME_ATTRIBUTE, "0")
    second.SetAttribute(FRAME_ATTRIBUTE, "3")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    recorder = _Recorder(engine)
    run_action("track", recorder, browser_node=browser, rois=[first, second], segmentation_node=seg)
    prompted = [(next(t for t in range(N_FRAMES) if np.array_equal(image, frames[t])),
                 [p.box for p in prompts]) for image, prompts in recorder.calls]
    box = {roi.GetName(): roi_to_voxel_box(roi, proxy).box_on_slice(0) for roi in (first, second)}
    assert prompted == [(0, [box["first"]]), (3, [box["second"]])]

    expected = {name: propagation.track(engine, frames, frame, [box[name]]).labels == 1
                for name, frame in (("first", 0), ("second", 3))}
    seq = browser.GetSequenceNode(seg)
    assert seq.GetNumberOfDataNodes() == N_FRAMES
    for t in range(N_FRAMES):
        stored = seq.GetNthDataNode(t)
        for name in ("first", "second"):
            got = mrml.export_segment_labelmap(stored, proxy, [name])[0] > 0
            # where both claim a pixel the higher score wins: the rest is each box's own track
            other = expected["second" if name == "first" else "first"][t]
            np.testing.assert_array_equal(got & ~other, expected[name][t] & ~other,
                                          err_msg=f"{name}, frame {t}")
    tags = mrml.read_provenance(seq.GetNthDataNode(1), "second")
    assert tags["box_frames"] == "0,3" and tags["start_frame"] == "0"


# ---- bug 4: nodes that left the scene while the model ran --------------------------------------


def _clicked_request(slicer_scene):
    volume = add_volume(slicer_scene, _lesion(), name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    from polypsam import mrml

    request = mrml.Request("clicks", input_node=volume, segmentation_node=seg, segment="Polyp")
    include, exclude = mrml.click_lists(slicer_scene, "Polyp")
    _click(include, volume, 22.0, 20.0, 3.0)
    return request.with_(include=include, exclude=exclude), volume, seg


@pytest.mark.parametrize("removed", ["output", "input"])
def test_a_run_whose_nodes_were_removed_writes_nothing(slicer_scene, engine, removed):
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    session = mrml.Session(slicer_scene)
    try:
        request, volume, seg = _clicked_request(slicer_scene)
        started = session.start(request, engine)  # no worker: the model work is done
        slicer_scene.RemoveNode(seg if removed == "output" else volume)
        steps = mrml.undo_history_count()
        what = "output segmentation 'out'" if removed == "output" else "input 'ct'"
        with pytest.raises(InvalidInputError, match=f"the {what} was removed from the scene"):
            started.write()
        assert seg.GetSegmentation().GetNumberOfSegments() == 0, "nothing written"
        assert mrml.undo_history_count() == steps, "no undo step saved"
    finally:
        session.close()


def test_a_scene_close_cancels_the_run_under_way(slicer_scene, engine):
    from polypsam import mrml
    from polypsam.errors import CancelledError

    session = mrml.Session(slicer_scene)
    try:
        request, _volume, seg = _clicked_request(slicer_scene)
        started = session.start(request, engine)
        slicer_scene.Clear(0)
        assert started.cancelled
        with pytest.raises(CancelledError):
            started.write()
        assert seg.GetSegmentation().GetNumberOfSegments() == 0
    finally:
        session.close()


# ---- bug 5: candidates belong to the image they were computed on -------------------------------


def test_candidates_are_forgotten_when_the_inputs_voxels_change(slicer_scene, engine):
    """Next candidate after the input node's image changed (another time point of a 4-D
    browser, a reloaded file: same node, same ID) writes nothing."""
    import slicer

    from polypsam import mrml

    session = mrml.Session(slicer_scene)
    try:
        request, volume, seg = _clicked_request(slicer_scene)
        clicked = session.run(request.with_(multimask=True), engine)
        assert clicked.candidates
        assert session.request("candidate", _Params(volume, seg), segment="Polyp").previous is clicked
        before = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
        slicer.util.updateVolumeFromArray(volume, _lesion(shift=6))
        again = session.request("candidate", _Params(volume, seg), segment="Polyp")
        assert again.previous is None
        result = session.run(again)
        assert result.summary.startswith("No candidates")
        np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume, ["Polyp"]), before)
    finally:
        session.close()


class _Params:
    """The module's parameter node fields (by name) for an input and an output."""

    def __init__(self, volume, seg):
        self.inputVolume, self.outputSegmentation = volume, seg
        self.inputSequenceBrowser, self.rois = None, []
        self.keySlice = self.sliceRangeStart = self.sliceRangeEnd = -1
        self.windowPreset = "display"


# ---- bug 11: inputs first ------------------------------------------------------------------------


def test_check_inputs_names_what_is_missing_before_anything_happens(slicer_scene, slicer_core):
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    browser, proxy, _ = _video(slicer_scene, slicer_core)
    volume = add_volume(slicer_scene, _lesion(), name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 20, 3), (12, 12, 3), "box")
    nodes = slicer_scene.GetNumberOfNodes()
    refused = {
        ("clicks", None): "no input image selected",
        ("segment", None): "no input image selected",
        ("propagate", volume): "no box",
        ("propagate", proxy): "needs a scalar volume",
        ("start-from-segment", volume): "no output segmentation",
    }
    for (action, node), message in refused.items():
        rois = [] if (action, node) == ("propagate", volume) else [roi]
        with pytest.raises(InvalidInputError, match=message):
            mrml.check_inputs(mrml.Request(action, input_node=node, rois=rois))
    with pytest.raises(InvalidInputError, match="no sequence browser"):
        mrml.check_inputs(mrml.Request("track", rois=[roi]))
    with pytest.raises(InvalidInputError, match="no box"):
        mrml.check_inputs(mrml.Request("track", browser_node=browser))
    mrml.check_inputs(mrml.Request("track", browser_node=browser, rois=[roi]))  # output made later
    mrml.check_inputs(mrml.Request("propagate-clicks", input_node=proxy, browser_node=browser))
    mrml.check_inputs(mrml.Request("clicks", input_node=volume))
    mrml.check_inputs(mrml.Request("candidate", input_node=volume))  # "No candidates" says why
    assert slicer_scene.GetNumberOfNodes() == nodes, "nothing made in the scene"


# ---- the output a segmentation sequence can use ------------------------------------------------


def test_track_refuses_the_cts_segmentation_before_any_model_work(slicer_scene, slicer_core, engine):
    """A segmentation holding a CT's segments cannot be the video's segmentation sequence: the
    advice is a new output segmentation, given before the model runs."""
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    volume = add_volume(slicer_scene, _lesion(), ijk_to_ras_matrix((0.8, 0.8, 2.0), (5.0, -3.0, 10.0)),
                        name="ct")
    ct_seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ct seg")
    mask = np.zeros(_lesion().shape, dtype=bool)
    mask[3, 15:25, 18:28] = True
    mrml.write_mask_to_segment(ct_seg, "Lesion", mask, volume)
    browser, proxy, _ = _video(slicer_scene, slicer_core)
    roi = add_roi_on_ijk(slicer_scene, proxy, (24, 22, 0), (20, 18, 1), "box")
    request = mrml.Request("track", browser_node=browser, rois=[roi], segmentation_node=ct_seg)
    for check in (lambda: mrml.check_inputs(request), lambda: mrml.start(request, recorder)):
        recorder = _Recorder(engine)
        with pytest.raises(InvalidInputError, match="another image.*new output segmentation"):
            check()
        assert recorder.calls == [] and recorder.tracks == 0, "refused before any model work"
    assert browser.GetSequenceNode(ct_seg) is None


def test_one_output_tracked_from_two_browsers_is_refused(slicer_scene, slicer_core, engine):
    """A segmentation synchronised with one browser cannot become another browser's proxy too:
    each browser would save its items into the node the other one shows."""
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    first, proxy, _ = _video(slicer_scene, slicer_core, name="first video")
    second, second_proxy, _ = _video(slicer_scene, slicer_core, seed=90, name="second video")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    mrml.write_tracked_masks_to_sequence(first, seg, {0: np.ones((HEIGHT, WIDTH), dtype=bool)})
    stored = first.GetSequenceNode(seg).GetNumberOfDataNodes()
    roi = add_roi_on_ijk(slicer_scene, second_proxy, (24, 22, 0), (20, 18, 1), "box")
    recorder = _Recorder(engine)
    request = mrml.Request("track", browser_node=second, rois=[roi], segmentation_node=seg)
    with pytest.raises(InvalidInputError, match="already tracked in the sequence browser 'browser'"):
        mrml.start(request, recorder)
    assert recorder.calls == [] and second.GetSequenceNode(seg) is None
    assert first.GetSequenceNode(seg).GetNumberOfDataNodes() == stored
    with pytest.raises(InvalidInputError, match="already tracked"):
        mrml.write_tracked_masks_to_sequence(second, seg, {0: np.ones((HEIGHT, WIDTH), dtype=bool)})
    assert second.GetSequenceNode(seg) is None


# ---- the editable intensity range is the Segment Editor's source volume's ------------------------


def test_the_intensity_range_masks_the_segment_editors_source_volume(slicer_scene, engine):
    """Slicer masks the intensities of the Segment Editor's source volume
    (vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap at v5.10.0), which may be another
    volume than PolypSAM's input: its voxels decide, on the same grid; another grid is refused
    before the model runs."""
    from polypsam import mrml
    from polypsam.errors import InvalidInputError

    array = _lesion()
    volume = add_volume(slicer_scene, array, name="ct")
    other_values = np.where(np.arange(array.shape[2]) < 22, 100, -500).astype(np.int16)
    other = add_volume(slicer_scene, np.broadcast_to(other_values, array.shape).copy(), name="other")
    editor = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "editor")
    editor.SourceVolumeIntensityMaskOn()
    editor.SetSourceVolumeIntensityMaskRange(0, 200)
    editor.SetAndObserveSourceVolumeNode(other)
    include, _ = mrml.click_lists(slicer_scene, "Polyp")
    _click(include, volume, 22.0, 20.0, 3.0)
    plain = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plain")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masked")
    fields = dict(input_node=volume, segment="Polyp", include=include)
    run_action("clicks", engine, segmentation_node=plain, **fields)
    run_action("clicks", engine, segmentation_node=seg, editor_node=editor, **fields)
    computed = mrml.export_segment_labelmap(plain, volume, ["Polyp"])[3] == 1
    written = mrml.export_segment_labelmap(seg, volume, ["Polyp"])[3] == 1
    in_range = (other_values >= 0) & (other_values <= 200)
    inputs_range = (array[3] >= 0) & (array[3] <= 200)
    assert not np.array_equal(computed & in_range, computed & inputs_range), "a telling case"
    np.testing.assert_array_equal(written, computed & in_range)

    elsewhere = add_volume(slicer_scene, array, np.diag([2.0, 2.0, 2.0, 1.0]), name="coarse")
    editor.SetAndObserveSourceVolumeNode(elsewhere)
    with pytest.raises(InvalidInputError, match="source volume 'coarse' is not on the grid"):
        mrml.start(mrml.Request("clicks", segmentation_node=seg, editor_node=editor, **fields),
                   _Recorder(engine))


# ---- the Segment Editor's Ctrl+Z after Track (suspected: it reverts only the frame shown) --------


def test_segment_editor_undo_has_nothing_to_revert_after_track(slicer_scene, slicer_core):
    """Slicer's own Segment Editor logic (vtkSlicerSegmentEditorLogic, in slicer-core as in
    Slicer 5.10): after a region write its Ctrl+Z reverts it; after a Track it has nothing to
    revert, so it cannot revert only the frame shown. The browser shows a frame by a shallow
    CopyContent, which gives the proxy segmentation the item's vtkSegmentation
    (vtkMRMLSegmentationNode::CopyContent), and the editor's history drops its states when the
    edited vtkSegmentation changes (vtkSegmentationHistory::SetSegmentation). PolypSAM's Undo
    reverts the whole Track (test_mrml_track_clicks)."""
    import slicer

    from polypsam import mrml
    from polypsam.mrml.writer import RegionWrite, SequenceWrite, write

    def editing(segmentation):
        logic = slicer.vtkSlicerSegmentEditorLogic()
        logic.SetMRMLScene(slicer_scene)
        logic.SetSegmentEditorNode(slicer_scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        logic.SetMaximumNumberOfUndoStates(10)  # qMRMLSegmentEditorWidget's default
        logic.SetSegmentationNode(segmentation)
        return logic

    volume = add_volume(slicer_scene, _lesion(), name="ct")
    ct_seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ct seg")
    logic = editing(ct_seg)
    logic.SaveStateForUndo()  # what PolypSAM's widget does right before a write
    mask = np.zeros((1, 40, 48), dtype=bool)
    mask[0, 15:25, 18:28] = True
    write(ct_seg, [RegionWrite("Lesion", mask, (0, 47, 0, 39, 3, 3))], reference=volume,
          source=_lesion())
    assert logic.CanUndo(), "a region write is one Segment Editor undo step"
    logic.Undo()
    assert ct_seg.GetSegmentation().GetNumberOfSegments() == 0

    browser, proxy, _ = _video(slicer_scene, slicer_core)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    logic = editing(seg)
    for value in (False, True):  # a first Track, then a second one into the same sequence
        logic.SaveStateForUndo()
        shown = seg.GetSegmentation()
        write(seg, [SequenceWrite(browser, {t: {"Polyp": np.full((HEIGHT, WIDTH), value)}
                                            for t in range(N_FRAMES)}, ["Polyp"])])
        slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
        assert seg.GetSegmentation() is not shown, "the proxy shows the item's vtkSegmentation"
        assert not logic.CanUndo(), "nothing for the Segment Editor's Ctrl+Z to revert"
    stored = [mrml.export_segment_labelmap(browser.GetSequenceNode(seg).GetNthDataNode(t), proxy,
                                           ["Polyp"]).all() for t in range(N_FRAMES)]
    assert stored == [True] * N_FRAMES
