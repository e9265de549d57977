"""The one entry point and the state the click tools keep (``polypsam.mrml.session``) on slicer-core.

The Slicer widget keeps no operation state: the last click result (its candidates) and the last
propagation live in a :class:`polypsam.mrml.Session`, which hands them to the next request of the
same input, segmentation and segment, and forgets them when one of those changes or the scene
closes. Requests are built from a parameter node by field name (the module's parameter node has
these fields; ``scripts/check_slicer_parameter_node.py`` builds them from Slicer's real one).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from slicer_fixtures import add_rgb_video, add_roi_on_ijk, add_volume

pytestmark = pytest.mark.usefixtures("slicer_core")


def _lesion(shape=(7, 40, 48)):
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]]
    array = np.full(shape, -120, dtype=np.int16)
    array[(kk - 3) ** 2 / 6 + (jj - 20) ** 2 / 60 + (ii - 22) ** 2 / 60 < 1] = 80
    return array


def _parameters(**fields):
    """What the module's parameter node holds, by its field names."""
    values = dict(inputVolume=None, inputSequenceBrowser=None, outputSegmentation=None, rois=[],
                  keySlice=-1, sliceRangeStart=-1, sliceRangeEnd=-1, windowPreset="display")
    values.update(fields)
    return types.SimpleNamespace(**values)


def _click(point_list, volume, ijk):
    from polypsam.mrml import ijk_to_world

    point_list.AddControlPoint(*[float(v) for v in (ijk_to_world(volume) @ np.array([*ijk, 1.0]))[:3]])


@pytest.fixture
def session(slicer_scene):
    from polypsam import mrml

    session = mrml.Session(slicer_scene)
    yield session
    session.close()


def test_candidates_are_kept_for_their_input_and_segment_only(slicer_scene, session, engine):
    """Next candidate writes the next of the last click's candidates; after the input or the
    target segment changes there are none to write (the old ones belong to another image)."""
    from polypsam import mrml

    volume = add_volume(slicer_scene, _lesion(), name="ct")
    other = add_volume(slicer_scene, _lesion() + 5, name="other ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    p = _parameters(inputVolume=volume, outputSegmentation=seg)
    first = session.request("clicks", p, segment="Polyp", multimask=True)
    assert first.include.GetAttribute("PolypSAM.segment") == "Polyp", "the segment's click lists"
    _click(first.include, volume, (22, 20, 3))
    clicked = session.run(first, engine)
    assert clicked.candidates[3] and first.previous is None
    best = clicked.chosen[3]

    nxt = session.request("candidate", p, segment="Polyp")
    assert nxt.previous is clicked
    session.run(nxt)
    masks, _ = clicked.candidates[3]
    labels = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    np.testing.assert_array_equal(labels[3] == 1, masks[(best + 1) % 3])
    assert clicked.chosen[3] == (best + 1) % 3 and "candidate" in clicked.summary

    none = session.run(session.request("candidate", _parameters(inputVolume=other, outputSegmentation=seg),
                                       segment="Polyp"))
    assert none.summary.startswith("No candidates") and not none.segment_ids
    np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume, ["Polyp"]), labels)
    assert mrml.undo(seg), "no undo step for the write that did not happen: undo reverts the candidate"
    np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume, ["Polyp"])[3] == 1,
                                  masks[best])
    assert session.request("candidate", p, segment="Polyp").previous is None, "forgotten"
    session.run(session.request("clicks", p, segment="Polyp", multimask=True), engine)
    assert session.request("candidate", p, segment="Polyp 2").previous is None, "another segment"
    assert session.request("candidate", p, segment="Polyp").previous is None


def test_a_scene_close_forgets_the_state_and_the_undo_history(slicer_scene, session, engine):
    from polypsam import mrml

    volume = add_volume(slicer_scene, _lesion(), name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    p = _parameters(inputVolume=volume, outputSegmentation=seg)
    request = session.request("clicks", p, segment="Polyp", multimask=True)
    _click(request.include, volume, (22, 20, 3))
    session.run(request, engine)
    assert session.request("candidate", p, segment="Polyp").previous is not None
    assert mrml.undo_history_count() >= 1
    slicer_scene.Clear(0)
    assert session.previous(mrml.Request("candidate", input_node=volume, segmentation_node=seg,
                                         segment="Polyp")) is None
    assert mrml.undo_history_count() == 0


def test_propagate_clicks_continue_from_the_sessions_last_propagation(slicer_scene, session, engine):
    """The second Propagate clicks gets the first one's result: only the direction a new click
    affects is tracked again, and the labels equal a full run's."""
    from polypsam import mrml, propagation
    from polypsam.engine import FramePrompt, Prompt

    array = _lesion((9, 40, 48))
    volume = add_volume(slicer_scene, array, name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    p = _parameters(inputVolume=volume, outputSegmentation=seg, sliceRangeStart=1, sliceRangeEnd=7,
                    windowPreset="abdomen")
    request = session.request("propagate-clicks", p, segment="Polyp")
    _click(request.include, volume, (22, 20, 4))
    first = session.run(request, engine)
    assert first.propagation.tracked == {"backward": 3, "forward": 3}
    _click(request.include, volume, (23, 21, 6))
    again = session.request("propagate-clicks", p, segment="Polyp")
    assert again.previous is first
    second = session.run(again, engine)
    assert second.propagation.tracked == {"forward": 3}
    full = propagation.propagate(engine, mrml.volume_from_node(volume),
                                 [Prompt(points=[(22.0, 20.0)], labels=[1])], (1, 7), 4,
                                 refinements=[FramePrompt(6, 1, points=[(23.0, 21.0)], labels=[1])],
                                 intensity=mrml.intensity_for(volume, "abdomen"))
    np.testing.assert_array_equal(second.propagation.labelmap.array, full.labelmap.array)
    labels = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    np.testing.assert_array_equal(labels[1:8] == 1, full.labelmap.array[1:8] == 1)


def test_a_run_is_polled_cancelled_and_written_once(slicer_scene, engine):
    """start() reads the scene and starts the model work on the worker; the caller polls (nothing
    calls back into it), reads progress, and a cancel writes nothing."""
    import threading

    from polypsam import mrml
    from polypsam.background import EngineWorker
    from polypsam.errors import CancelledError

    volume = add_volume(slicer_scene, _lesion(), name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 20, 3), (20, 18, 5), "Lesion")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    request = mrml.Request("propagate", input_node=volume, rois=[roi], segmentation_node=seg)
    worker = EngineWorker()
    try:
        seen = []
        run = mrml.start(request, engine, mrml.RunContext(
            worker=worker, progress=lambda d, t, m: seen.append(threading.get_ident())))
        updates = []
        while not run.wait(0.005):
            update = run.progress()
            if update is not None:
                updates.append(update)
        assert seen and threading.get_ident() not in seen, "progress came from the worker"
        result = run.write()
        assert "Lesion" in result.segment_ids and result.action == "propagate"
        with pytest.raises(RuntimeError, match="written already"):
            run.write()
        before = mrml.export_segment_labelmap(seg, volume, ["Lesion"])
        cancelled = mrml.start(request, engine, mrml.RunContext(worker=worker))
        cancelled.cancel()
        cancelled.wait()
        assert cancelled.cancelled
        with pytest.raises(CancelledError):
            cancelled.write()
        np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume, ["Lesion"]), before)
    finally:
        worker.close()
    with pytest.raises(Exception, match="unknown operation"):
        mrml.Request("nothing")
    with pytest.raises(Exception, match="no engine"):
        mrml.start(request, None)


def test_the_buttons_that_apply_follow_the_nodes(slicer_scene, slicer_core):
    from conftest import synthetic_rgb
    from polypsam import mrml

    volume = add_volume(slicer_scene, _lesion(), name="ct")
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 20, 3), (20, 18, 1), "Polyp")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")

    def allowed(**fields):
        return mrml.available_actions(mrml.Request.from_parameter_node("segment", _parameters(**fields)))

    assert allowed() == set()
    assert allowed(inputVolume=volume) == {"clicks", "candidate", "propagate-clicks"}
    assert allowed(inputVolume=volume, rois=[roi, None], outputSegmentation=seg) == {
        "segment", "refine", "propagate", "clicks", "candidate", "propagate-clicks",
        "start-from-segment", "undo", "export"}
    browser = add_rgb_video(slicer_scene, [synthetic_rgb(16, 16, seed=t) for t in range(3)])
    slicer_core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
    video = allowed(inputVolume=proxy, inputSequenceBrowser=browser, rois=[roi], outputSegmentation=seg)
    assert {"track", "propagate-clicks", "segment", "export"} <= video and "propagate" not in video
    assert mrml.Request("clicks", input_node=proxy, browser_node=browser).video_browser is browser
    assert mrml.Request("clicks", input_node=volume, browser_node=browser).video_browser is None
    assert mrml.Request("segment", browser_node=browser).reference_volume is proxy
