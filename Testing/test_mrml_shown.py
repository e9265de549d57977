"""Answers before the click in Slicer (issue 19), on real slicer-core scenes: the slice a slice
view shows of the input, and its background encoding.

The slice a view shows is checked against planes built independently from the volume's own grid
(the plane through voxel centres of slice k, spanned by the volume's I and J directions, under a
parent transform); the encoding runs on the real random-weight SAM2, held at its first encoder
block by a hook so "the user moved to another slice while it ran" happens every time.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from slicer_fixtures import (
    add_linear_transform, add_roi_on_ijk, add_volume, ijk_to_ras_matrix, rotation, run_action,
)

mrml = pytest.importorskip("polypsam.mrml")

from polypsam.prefetch import CANCELLED, DONE, RUNNING  # noqa: E402
from encoder_probes import EncoderCounter, held_encoding  # noqa: E402,F401 (a fixture)

SHAPE = (8, 40, 48)  # K, J, I
OBLIQUE = ijk_to_ras_matrix((0.8, 0.9, 2.5), (3.0, -2.0, 11.0), rotation("z", 25) @ rotation("x", 12))
# a sagittal acquisition: K runs along R (left-right), I along A, J along S
SAGITTAL = ijk_to_ras_matrix((0.7, 0.7, 3.0), (-10.0, 4.0, 2.0),
                             np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))


def ct_array(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 150, shape) + 40).astype(np.int16)


def red_view(scene):
    """The Red slice view's node, as Slicer's layout creates it (singleton tag "Red")."""
    node = mrml.view_node(scene)
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.SetLayoutName("Red")
        node = scene.AddNode(node)
    return node


def show_plane(slice_node, origin, u, v) -> None:
    """Point the view at the plane through ``origin`` spanned by ``u``, ``v`` (world RAS)."""
    import slicer

    u, v = np.asarray(u, float) / np.linalg.norm(u), np.asarray(v, float)
    v = v - u * (u @ v)
    v /= np.linalg.norm(v)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = u, v, np.cross(u, v), origin
    slice_node.GetSliceToRAS().DeepCopy(slicer.util.vtkMatrixFromArray(m))
    slice_node.UpdateMatrices()


@pytest.mark.parametrize("grid", ["oblique", "sagittal"])
def test_the_slice_a_view_shows_through_the_grid_and_transforms(slicer_scene, grid):
    """No axis order assumed: the view shows slice k where its plane is the volume's K plane
    through slice k (under a parent transform); half a voxel away still k; oblique planes, planes
    across another axis and planes outside the volume show none."""
    ijk_to_ras = {"oblique": OBLIQUE, "sagittal": SAGITTAL}[grid]
    volume = add_volume(slicer_scene, ct_array(), ijk_to_ras, name="ct")
    parent = np.eye(4)
    parent[:3, :3], parent[:3, 3] = rotation("y", 30), (12.0, -7.0, 5.0)
    volume.SetAndObserveTransformNodeID(add_linear_transform(slicer_scene, parent).GetID())
    to_world = parent @ ijk_to_ras  # built here from the test's own matrices
    view = red_view(slicer_scene)
    i_axis, j_axis, k_axis = (to_world[:3, n] for n in range(3))

    def at(k: float, *, u=i_axis, v=j_axis) -> int | None:
        show_plane(view, (to_world @ [20.0, 15.0, k, 1.0])[:3], u, v)
        return mrml.shown_slice_index(view, volume)

    assert [at(k) for k in range(SHAPE[0])] == list(range(SHAPE[0]))
    assert (at(2.4), at(2.6), at(-0.4), at(SHAPE[0] - 0.6)) == (2, 3, 0, SHAPE[0] - 1)
    assert at(-0.7) is None and at(SHAPE[0] - 0.2) is None, "outside the volume"
    assert at(3, u=j_axis, v=-i_axis) == 3, "a view rotated in the plane shows the same slice"
    assert at(3, u=i_axis + 0.2 * k_axis) is None, "an oblique view shows no K slice"
    assert at(3, u=i_axis, v=k_axis) is None, "a view across the slices shows no K slice"
    show_plane(view, (to_world @ [20.0, 15.0, 5, 1.0])[:3], i_axis, j_axis)
    shown = mrml.shown_image(view, volume, "abdomen")
    import slicer

    voxels = slicer.util.arrayFromVolume(volume)
    assert shown.k == 5 and np.array_equal(shown.image, voxels[5])
    assert np.shares_memory(shown.image, voxels) and not shown.image.flags.writeable, "no copy"
    assert shown.intensity == mrml.intensity_for(volume, "abdomen")


def test_an_axial_view_of_a_sagittal_volume_shows_no_slice(slicer_scene):
    """Slicer's default Red view is axial: across a sagittal acquisition's slices it shows no
    slice the operations segment, so nothing would be encoded."""
    volume = add_volume(slicer_scene, ct_array(), SAGITTAL, name="sagittal")
    view = red_view(slicer_scene)
    view.SetOrientationToAxial()
    view.SetSliceOffset(10.0)
    assert mrml.shown_slice_index(view, volume) is None
    view.SetOrientationToSagittal()
    for k in (0, 3, 7):
        view.SetSliceOffset(10.0 - 3.0 * k)  # R = -10 + 3 k; a sagittal view's normal points left
        assert mrml.shown_slice_index(view, volume) == k


def test_an_rgb_frame_is_shown_as_the_segment_button_reads_it(slicer_scene):
    rgb = np.random.default_rng(3).integers(0, 255, (1, 30, 40, 3), dtype=np.uint8)
    frame = add_volume(slicer_scene, rgb, name="frame", class_name="vtkMRMLVectorVolumeNode")
    view = red_view(slicer_scene)
    view.SetOrientationToAxial()
    view.SetSliceOffset(0.0)
    shown = mrml.shown_image(view, frame)
    assert shown.k == 0 and shown.intensity is None
    assert np.array_equal(shown.image, mrml.frame_from_vector_node(frame))
    view.SetSliceOffset(3.0)
    assert mrml.shown_image(view, frame) is None, "the view is off the frame's plane"


# -- the background encoding on the real engine ----------------------------------------------------

def parameters(volume, preset="abdomen", **fields):
    """The module's parameter-node fields the widget passes (read by name, as the widget's are)."""
    values = dict(inputVolume=volume, inputSequenceBrowser=None, rois=[], outputSegmentation=None,
                  keySlice=-1, sliceRangeStart=-1, sliceRangeEnd=-1, windowPreset=preset)
    values.update(fields)
    return types.SimpleNamespace(**values)


def test_moving_the_slice_cancels_the_encoding_and_the_box_after_hits_the_cache(
        slicer_scene, engine, held_encoding):
    started, release = held_encoding
    grid = ijk_to_ras_matrix((0.8, 0.8, 2.0), (5.0, -3.0, 10.0))
    volume = add_volume(slicer_scene, ct_array(7), grid, name="ct")
    view = red_view(slicer_scene)
    view.SetOrientationToAxial()
    view.SetSliceOffset(10.0 + 2.0 * 3)  # slice 3
    loaded = {"engine": None}
    background = mrml.BackgroundEncoding(slicer_scene, lambda: loaded["engine"])
    calls = EncoderCounter(engine.model)
    runs = engine.encoder_runs
    try:
        assert background.follow(parameters(volume)) is None, "no engine loaded: nothing encoded"
        loaded["engine"] = engine
        on_3 = background.follow(parameters(volume))
        assert started.wait(60) and on_3.state == RUNNING
        view.SetSliceOffset(10.0 + 2.0 * 5)  # the user moves to slice 5: ModifiedEvent
        on_5 = background.current
        assert on_5 is not on_3 and on_3.cancelled and not on_3.finished, "cancelled, not waited for"
        view.SetFieldOfView(200.0, 200.0, 1.0)  # zoom: the same slice, nothing new
        assert background.current is on_5
        release.set()
        assert on_3.wait(60) and on_5.wait(60)
        assert (on_3.state, on_5.state) == (CANCELLED, DONE)
        assert (calls.begun, calls.finished, engine.encoder_runs) == (2, 1, runs + 1)

        # the box placed on slice 5 (Segment, written into the segmentation): decoder only
        segmentation = mrml.new_segmentation(slicer_scene, volume)
        roi = add_roi_on_ijk(slicer_scene, volume, (24, 20, 5), (20, 18, 1), name="Lesion")
        result = run_action("segment", engine, input_node=volume, rois=[roi],
                            segmentation_node=segmentation, window_preset="abdomen")
        assert "slice(s) 5" in result.summary
        assert (calls.begun, engine.encoder_runs) == (2, runs + 1), "the box hit the cache"
        assert mrml.read_provenance(segmentation, "Lesion")["key_slice"] == "5"

        # a new window is another model input: encoded again; then the module is left
        on_display = background.follow(parameters(volume, preset="lung"))
        assert on_display is not on_5 and on_display.wait(60) and on_display.state == DONE
        background.stop()
        assert background.current is None
        view.SetSliceOffset(10.0 + 2.0 * 6)
        assert background.current is None and engine.encoder_runs == runs + 2, "left: nothing encoded"
        loaded["engine"] = None  # released
        background.follow(parameters(volume))
        assert background.current is None
    finally:
        background.stop()
        calls.remove()


def test_a_video_frame_shown_is_encoded_and_the_next_frame_replaces_it(slicer_scene, engine):
    from slicer_fixtures import add_rgb_video

    from conftest import synthetic_rgb

    browser = add_rgb_video(slicer_scene, [synthetic_rgb(48, 64, seed=s) for s in (1, 2)])
    import slicer

    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    view = red_view(slicer_scene)
    view.SetOrientationToAxial()
    view.SetSliceOffset(0.0)
    background = mrml.BackgroundEncoding(slicer_scene, lambda: engine)
    try:
        first = background.follow(parameters(None, inputSequenceBrowser=browser))
        assert first is not None and first.wait(60) and first.state == DONE
        runs = engine.encoder_runs
        browser.SetSelectedItemNumber(1)  # the proxy frame's pixels change
        second = background.current
        assert second is not first and second.wait(60) and second.state == DONE
        assert engine.encoder_runs == runs + 1
        proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
        engine.segment_2d(mrml.frame_from_vector_node(proxy), [(5, 5, 30, 30)])
        assert engine.encoder_runs == runs + 1, "the frame shown was encoded"
    finally:
        background.stop()
