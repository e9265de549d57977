"""Clicks on video frames: the frame each click belongs to, and tracking a segment with them
(real slicer-core scenes, the random-weight tiny SAM2 at image size 256)."""

from __future__ import annotations

import numpy as np
import pytest
from slicer_fixtures import add_rgb_video, add_roi_on_ijk, run_action

pytestmark = pytest.mark.usefixtures("slicer_core")

N_FRAMES, HEIGHT, WIDTH = 5, 48, 64


def _video(slicer_scene, slicer_core, selected=1):
    from conftest import synthetic_rgb

    frames = [synthetic_rgb(HEIGHT, WIDTH, seed=70 + t) for t in range(N_FRAMES)]
    browser = add_rgb_video(slicer_scene, frames, selected=selected)
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    assert proxy is not None and proxy.IsA("vtkMRMLVectorVolumeNode")
    return browser, proxy, np.stack(frames)


def _ras(proxy, x, y):
    from polypsam.mrml import ijk_to_world

    return (ijk_to_world(proxy) @ np.array([x, y, 0.0, 1.0]))[:3]


def _click(point_list, proxy, x, y, frame=None):
    """Add a control point at pixel (x, y) of the frame; ``frame`` is recorded as the click tool
    records it (an observer does it in the tests that check the observer)."""
    n = point_list.AddControlPoint(*[float(v) for v in _ras(proxy, x, y)])
    if frame is not None:
        point_list.SetNthControlPointDescription(n, f"frame {frame}")
    return n


class _Counter:
    """The real engine, recording each track call's direction and the frames it yielded."""

    def __init__(self, engine):
        self.engine, self.tracks = engine, []

    @property
    def info(self):
        return self.engine.info

    def segment_2d(self, *args, **kwargs):
        return self.engine.segment_2d(*args, **kwargs)

    def track(self, frames, prompts, *args, **kwargs):
        entry = {"reverse": kwargs.get("reverse", False), "frames": 0, "prompts": list(prompts)}
        self.tracks.append(entry)
        for fm in self.engine.track(frames, prompts, *args, **kwargs):
            entry["frames"] += 1
            yield fm


def _stored(browser, seg, proxy, name="Polyp"):
    """The segment's mask on every frame of the segmentation sequence (``None``: no segment)."""
    from polypsam import mrml

    seq = browser.GetSequenceNode(seg)
    out = []
    for t in range(seq.GetNumberOfDataNodes()):
        stored = seq.GetNthDataNode(t)
        has = stored.GetSegmentation().GetSegmentIdBySegmentName(name)
        out.append(mrml.export_segment_labelmap(stored, proxy, [name])[0] > 0 if has else None)
    return out


def test_clicks_record_the_frame_shown_when_they_were_placed(slicer_scene, slicer_core):
    from polypsam.mrml.clicks import click_lists
    from polypsam.mrml.video_clicks import click_frame, observe_click_frames, recorded_frame

    browser, proxy, _ = _video(slicer_scene, slicer_core, selected=3)
    include, exclude = click_lists(slicer_scene, "Polyp")
    loose = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "loose")
    observe_click_frames(include, browser)
    observe_click_frames(include, browser)  # again: still one observer
    first = _click(include, proxy, 10, 12)
    browser.SetSelectedItemNumber(1)
    second = _click(include, proxy, 20, 22)
    unrecorded = _click(loose, proxy, 5, 5)
    assert include.GetNthControlPointDescription(first) == "frame 3"
    assert [recorded_frame(include, n) for n in (first, second)] == [3, 1]
    include.RemoveNthControlPoint(first)  # the remaining point keeps its frame
    assert click_frame(include, 0, browser) == 1
    assert recorded_frame(loose, unrecorded) is None
    assert click_frame(loose, unrecorded, browser) == 1, "unrecorded: the browser's current item"
    browser.SetSelectedItemNumber(4)
    assert click_frame(loose, unrecorded, browser) == 4
    assert click_frame(include, 0, browser) == 1, "a recorded frame does not follow the browser"
    assert exclude.GetNumberOfControlPoints() == 0


def test_place_clicks_with_a_browser_records_each_points_frame(slicer_scene, slicer_core):
    from polypsam.mrml import scene
    from polypsam.mrml.clicks import click_lists
    from polypsam.mrml.video_clicks import recorded_frame

    browser, proxy, _ = _video(slicer_scene, slicer_core, selected=2)
    selection, interaction = slicer_core.app.GetSelectionNode(), slicer_core.app.GetInteractionNode()
    include, exclude = click_lists(slicer_scene, "Polyp")
    scene.place_clicks(selection, interaction, exclude, browser=browser)
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence()
    scene.place_clicks(selection, interaction, include)  # no browser: a volume, nothing recorded
    _click(exclude, proxy, 4.0, 5.0)
    browser.SetSelectedItemNumber(0)
    _click(exclude, proxy, 6.0, 7.0)
    _click(include, proxy, 8.0, 9.0)
    assert [recorded_frame(exclude, n) for n in range(2)] == [2, 0]
    assert recorded_frame(include, 0) is None
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    interaction.SetPlaceModePersistence(0)


def test_clicks_on_two_frames_condition_tracking_and_a_later_click_retracks_one_way(
        slicer_scene, slicer_core, engine):
    from polypsam import mrml, propagation
    from polypsam.engine import FramePrompt, Prompt

    browser, proxy, frames = _video(slicer_scene, slicer_core, selected=4)
    include = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "in")
    exclude = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "out")
    _click(include, proxy, 25.4, 24.2, frame=1)
    _click(include, proxy, 27.0, 23.5, frame=3)
    _click(exclude, proxy, 55.0, 6.0, frame=3)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    counter = _Counter(engine)
    first = run_action("propagate-clicks", counter, browser_node=browser, segmentation_node=seg,
                       segment="Polyp", include=include, exclude=exclude)
    assert first.key_frame == 1, "the first include click's frame, not the browser's item"
    key_prompt = Prompt(points=[(25.4, 24.2)], labels=[1])
    refinements = [FramePrompt(3, 1, points=[(27.0, 23.5), (55.0, 6.0)], labels=[1, 0])]
    expected = propagation.track(engine, frames, 1, [key_prompt], refinements=refinements)
    np.testing.assert_array_equal(first.tracking.labels, expected.labels)
    assert (expected.labels[1] == 1).any(), "a mask to compare on the key frame"
    conditioning = {(p.frame, p.points, p.labels) for e in counter.tracks for p in e["prompts"]
                    if p.points}
    assert conditioning == {(3, ((27.0, 23.5), (55.0, 6.0)), (1, 0))}, "frame 3's clicks condition"
    stored = _stored(browser, seg, proxy)
    assert len(stored) == N_FRAMES
    for t in range(N_FRAMES):
        np.testing.assert_array_equal(stored[t], expected.labels[t] == 1, err_msg=f"frame {t}")
    tags = mrml.read_provenance(browser.GetSequenceNode(seg).GetNthDataNode(2), "Polyp")
    assert tags["operation"] == "track-clicks" and tags["start_frame"] == "1"
    assert tags["refinement_frames"] == "3"
    assert sorted(e["reverse"] for e in counter.tracks) == [False, True]

    # an include click on frame 4 (after the key frame 1): only the forward way is tracked again
    _click(include, proxy, 30.0, 25.0, frame=4)
    counter.tracks.clear()
    second = run_action("propagate-clicks", counter, browser_node=browser, segmentation_node=seg,
                        segment="Polyp", include=include, exclude=exclude, previous=first)
    assert [e["reverse"] for e in counter.tracks] == [False]
    assert second.tracking.tracked == {"forward": N_FRAMES - 2}
    assert counter.tracks[0]["frames"] == N_FRAMES - 1  # frames 1..4 (the key frame first)
    full = propagation.track(
        engine, frames, 1, [key_prompt],
        refinements=refinements + [FramePrompt(4, 1, points=[(30.0, 25.0)], labels=[1])])
    np.testing.assert_array_equal(second.tracking.labels, full.labels)
    np.testing.assert_array_equal(second.tracking.labels[:1], first.tracking.labels[:1])
    assert [np.array_equal(m, full.labels[t] == 1)
            for t, m in enumerate(_stored(browser, seg, proxy))] == [True] * N_FRAMES

    # undo: the first run's masks are back on every frame; again: the sequence is gone
    sequence = browser.GetSequenceNode(seg)
    assert mrml.undo(seg)
    assert browser.GetSequenceNode(seg) is sequence
    for t, mask in enumerate(_stored(browser, seg, proxy)):
        np.testing.assert_array_equal(mask, expected.labels[t] == 1, err_msg=f"frame {t}")
    assert mrml.undo(seg)
    assert browser.GetSequenceNode(seg) is None
    assert seg.GetSegmentation().GetNumberOfSegments() == 0


def test_a_box_on_the_key_frame_goes_with_its_clicks(slicer_scene, slicer_core, engine):
    from polypsam import propagation
    from polypsam.engine import FramePrompt, Prompt
    from polypsam.mrml.roi import FRAME_ATTRIBUTE, roi_to_voxel_box

    browser, proxy, frames = _video(slicer_scene, slicer_core, selected=0)
    roi = add_roi_on_ijk(slicer_scene, proxy, (26, 24, 0), (20, 18, 1), "Polyp")
    roi.SetAttribute(FRAME_ATTRIBUTE, "2")
    include = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "in")
    _click(include, proxy, 26.0, 24.0, frame=0)
    _click(include, proxy, 24.0, 22.0, frame=2)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    result = run_action("propagate-clicks", engine, browser_node=browser, segmentation_node=seg,
                        segment="Polyp", include=include, rois=[roi])
    assert result.key_frame == 2
    box = roi_to_voxel_box(roi, proxy).box_on_slice(0)
    expected = propagation.track(
        engine, frames, 2, [Prompt(box=box, points=[(24.0, 22.0)], labels=[1])],
        refinements=[FramePrompt(0, 1, points=[(26.0, 24.0)], labels=[1])])
    np.testing.assert_array_equal(result.tracking.labels, expected.labels)


def test_cancelled_tracking_leaves_the_sequence_untouched(slicer_scene, slicer_core, module_engine):
    from polypsam import mrml
    from polypsam.engine import CancelToken
    from polypsam.errors import CancelledError

    browser, proxy, _ = _video(slicer_scene, slicer_core, selected=2)
    include = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "in")
    _click(include, proxy, 25.0, 24.0, frame=2)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    first = run_action("propagate-clicks", module_engine, browser_node=browser, segmentation_node=seg,
                       segment="Polyp", include=include)
    before = _stored(browser, seg, proxy)
    _click(include, proxy, 20.0, 20.0, frame=0)
    cancel = CancelToken()

    def progress(done, total, message):
        if message.startswith("tracking clicks") and done >= 1:
            cancel.cancel()

    with pytest.raises(CancelledError):
        run_action("propagate-clicks", module_engine, browser_node=browser, segmentation_node=seg,
                   segment="Polyp", include=include, previous=first, progress=progress,
                   cancel=cancel)
    after = _stored(browser, seg, proxy)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert mrml.undo(seg) and browser.GetSequenceNode(seg) is None, "undo: the first run's step"
    assert not mrml.undo(seg), "the cancelled run left no undo step"


def test_bad_clicks_are_refused_and_the_scene_is_unchanged(slicer_scene, slicer_core, engine):
    from polypsam.errors import InvalidInputError

    browser, proxy, _ = _video(slicer_scene, slicer_core, selected=1)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "video seg")
    seg.CreateDefaultDisplayNodes()  # what the output check adds to a bare node

    def refused(match, include=None, exclude=None):
        nodes = slicer_scene.GetNumberOfNodes()
        with pytest.raises(InvalidInputError, match=match):
            run_action("propagate-clicks", engine, browser_node=browser, segmentation_node=seg,
                       segment="Polyp", include=include, exclude=exclude)
        assert browser.GetSequenceNode(seg) is None
        assert seg.GetSegmentation().GetNumberOfSegments() == 0
        assert slicer_scene.GetNumberOfNodes() == nodes

    far = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "far")
    _click(far, proxy, 20.0, 20.0, frame=N_FRAMES + 3)
    refused(rf"point 1 of 'far' was placed on frame {N_FRAMES + 3}, but the sequence has frames"
            rf" 0..{N_FRAMES - 1}", include=far)
    only_out = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "only out")
    _click(only_out, proxy, 20.0, 20.0, frame=1)
    refused("no include click and no box", exclude=only_out)
    refused("no include click and no box")
    include = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "in")
    _click(include, proxy, 20.0, 20.0, frame=1)
    lone = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lone out")
    _click(lone, proxy, 10.0, 10.0, frame=3)  # an exclude click alone on another frame
    refused("frame 3: exclude points alone", include=include, exclude=lone)
    outside = slicer_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "outside")
    _click(outside, proxy, 20.0, HEIGHT + 10.0, frame=1)
    refused("point 1 of 'outside' lies outside the volume", include=outside)
