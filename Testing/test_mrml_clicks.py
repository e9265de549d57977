"""Clicks, candidates, "start from segment" and Segment Editor masking on real slicer-core scenes."""

from __future__ import annotations

import numpy as np
import pytest

from slicer_fixtures import add_volume, ijk_to_ras_matrix, rotation, run_action

pytestmark = pytest.mark.usefixtures("slicer_core")


def _points(scene, name, ras_points, parent=None):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    for p in ras_points:
        node.AddControlPoint(*[float(v) for v in p])
    return node


def _transform(scene, matrix, name):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def _rigid(axis, degrees, shift):
    m = np.eye(4)
    m[:3, :3] = rotation(axis, degrees)
    m[:3, 3] = shift
    return m


GRIDS = {
    "oblique": ijk_to_ras_matrix((0.7, 0.8, 2.5), (12.0, -30.0, 7.0), rotation("z", 25) @ rotation("x", 12)),
    "flipped": ijk_to_ras_matrix((0.9, 0.6, 2.0), (40.0, 25.0, -5.0), np.diag([-1.0, 1.0, -1.0])),
}


def _lesion(shape=(7, 40, 48)):
    kk, jj, ii = np.mgrid[: shape[0], : shape[1], : shape[2]]
    array = np.full(shape, -120, dtype=np.int16)
    array[(kk - 3) ** 2 / 6 + (jj - 20) ** 2 / 60 + (ii - 22) ** 2 / 60 < 1] = 80
    return array


@pytest.mark.parametrize("grid", list(GRIDS))
def test_clicks_land_on_the_voxel_their_ras_position_maps_to(slicer_scene, grid, tmp_path):
    import SimpleITK as sitk

    from polypsam.mrml.clicks import clicks_from_markups

    volume = add_volume(slicer_scene, _lesion(), GRIDS[grid], name="ct")
    targets = [(5.3, 7.8, 2.4), (30.0, 20.0, 5.0), (0.2, 39.0, 0.0), (47.0, 0.0, 6.4)]
    ras = [(GRIDS[grid] @ np.array([*t, 1.0]))[:3] for t in targets]
    include = _points(slicer_scene, "in", ras[:2])
    exclude = _points(slicer_scene, "out", ras[2:])
    clicks = clicks_from_markups(volume, include, exclude)
    got = [(c.x, c.y, c.k, c.include) for c in clicks]
    expected = [(t[0], t[1], int(np.floor(t[2] + 0.5)), i < 2) for i, t in enumerate(targets)]
    np.testing.assert_allclose([g[:2] for g in got], [e[:2] for e in expected], atol=1e-6)
    assert [g[2:] for g in got] == [e[2:] for e in expected]
    # physical space, independently: SimpleITK reads the saved volume (LPS) and maps the points
    volume.AddDefaultStorageNode()
    volume.GetStorageNode().SetFileName(str(tmp_path / "ct.nrrd"))
    assert volume.GetStorageNode().WriteData(volume)
    image = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    for p, c in zip(ras, clicks):
        i, j, k = image.TransformPhysicalPointToContinuousIndex((-p[0], -p[1], p[2]))
        assert (c.x, c.y) == pytest.approx((i, j), abs=1e-4)
        assert c.k == int(np.floor(k + 0.5))


def test_clicks_under_parent_transforms(slicer_scene):
    from polypsam.mrml.clicks import clicks_from_markups

    volume = add_volume(slicer_scene, _lesion(), GRIDS["oblique"], name="ct")
    to_world = _rigid("y", 30, (5.0, -8.0, 12.0))
    volume.SetAndObserveTransformNodeID(_transform(slicer_scene, to_world, "volume moved").GetID())
    points_to_world = _rigid("x", -15, (1.0, 2.0, 3.0))
    parent = _transform(slicer_scene, points_to_world, "points moved")
    target = np.array([11.4, 17.2, 4.1, 1.0])
    world = to_world @ GRIDS["oblique"] @ target
    local = np.linalg.inv(points_to_world) @ world
    (click,) = clicks_from_markups(volume, _points(slicer_scene, "in", [local[:3]], parent))
    assert (click.x, click.y, click.k) == pytest.approx((11.4, 17.2, 4), abs=1e-6)


def test_click_outside_the_volume_is_refused(slicer_scene):
    from polypsam.errors import InvalidInputError
    from polypsam.mrml.clicks import clicks_from_markups

    volume = add_volume(slicer_scene, _lesion(), GRIDS["flipped"], name="ct")
    ras = (GRIDS["flipped"] @ np.array([10.0, 60.0, 3.0, 1.0]))[:3]
    with pytest.raises(InvalidInputError, match=r"point 1 of 'in' lies outside the volume 'ct' \(voxel J = 60.0"):
        clicks_from_markups(volume, _points(slicer_scene, "in", [ras]))


class Recorder:
    """The real engine, recording what each segment_2d call was given."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    @property
    def info(self):
        return self.engine.info

    def segment_2d(self, image, prompts, **kwargs):
        self.calls.append((np.array(image), list(prompts), kwargs))
        return self.engine.segment_2d(image, prompts, **kwargs)

    def track(self, *args, **kwargs):
        return self.engine.track(*args, **kwargs)


def _world(volume, ijk):
    from polypsam.mrml import ijk_to_world

    return (ijk_to_world(volume) @ np.array([*ijk, 1.0]))[:3]


def test_segment_with_clicks_on_an_oblique_volume_and_candidates(slicer_scene, engine):
    from polypsam import mrml
    from polypsam.engine import Prompt
    from polypsam.preprocess import Window

    array = _lesion()
    volume = add_volume(slicer_scene, array, GRIDS["oblique"], name="ct")
    volume.CreateDefaultDisplayNodes()
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(400, 40)
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    include = _points(slicer_scene, "in", [_world(volume, (22.2, 20.4, 3.1))])
    exclude = _points(slicer_scene, "out", [_world(volume, (2.0, 3.0, 2.8))])
    rec = Recorder(engine)
    result = run_action("clicks", rec, input_node=volume, segmentation_node=seg, segment="Polyp",
                        include=include, exclude=exclude, multimask=True)
    ((image, (prompt,), kwargs),) = rec.calls
    np.testing.assert_array_equal(image, array[3])
    np.testing.assert_allclose(prompt.points, [(22.2, 20.4), (2.0, 3.0)], atol=1e-6)
    assert prompt.labels == (1, 0) and kwargs["multimask"] is True
    (expected,) = engine.segment_2d(array[3], [Prompt(points=[(22.2, 20.4), (2.0, 3.0)], labels=[1, 0])],
                                    intensity=Window(40, 400), multimask=True)
    labels = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    assert not labels[[0, 1, 2, 4, 5, 6]].any()
    np.testing.assert_array_equal(labels[3] == 1, expected.mask)
    masks, scores = result.candidates[3]
    np.testing.assert_allclose(scores, expected.candidate_scores, atol=1e-6)
    assert result.chosen[3] == expected.best
    other = (expected.best + 1) % 3
    run_action("candidate", None, input_node=volume, segmentation_node=seg, previous=result,
               candidate=other)
    labels = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    np.testing.assert_array_equal(labels[3] == 1, expected.candidates[other])
    assert result.chosen[3] == other
    # a second click on the same (encoded) slice runs only the decoder
    runs = engine.encoder_runs
    include.AddControlPoint(*_world(volume, (25.0, 22.0, 3.0)))
    run_action("clicks", rec, input_node=volume, segmentation_node=seg, segment="Polyp",
               include=include, exclude=exclude)
    assert engine.encoder_runs == runs
    assert rec.calls[-1][1][0].mask is not None  # the segment's own mask went along


def _editor(scene, mode, overwrite, mask_segment="", intensity=None):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "editor")
    node.SetMaskMode(mode)
    node.SetOverwriteMode(overwrite)
    if mask_segment:
        node.SetMaskSegmentID(mask_segment)
    if intensity is not None:
        node.SourceVolumeIntensityMaskOn()
        node.SetSourceVolumeIntensityMaskRange(*intensity)
    return node


MASKING = {
    # name: (mask mode, overwrite mode, mask segment, intensity range)
    "inside one segment, overwrite none": ("EditAllowedInsideSingleSegment", "OverwriteNone", "Area", None),
    "outside all segments, overwrite all": ("EditAllowedOutsideAllSegments", "OverwriteAllSegments", "", None),
    "everywhere with intensity range, overwrite all": ("EditAllowedEverywhere", "OverwriteAllSegments", "", (0, 200)),
    "inside visible segments, overwrite visible": ("EditAllowedInsideVisibleSegments", "OverwriteVisibleSegments", "", None),
}


@pytest.mark.parametrize("name", list(MASKING))
def test_writes_follow_segment_editor_masking(slicer_scene, engine, name):
    """Voxels outside the editable area never change, in any segment (compared on the volume's
    physical grid, through Slicer's own export)."""
    import slicer

    from polypsam import mrml

    mode, overwrite, mask_segment, intensity = MASKING[name]
    array = _lesion()
    volume = add_volume(slicer_scene, array, GRIDS["flipped"], name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    seg.CreateDefaultDisplayNodes()
    area = np.zeros(array.shape, bool)
    area[:, 10:30, 12:34] = True
    other = np.zeros(array.shape, bool)
    other[3, 15:25, 18:40] = True
    hidden = np.zeros(array.shape, bool)
    hidden[3, 0:12, 0:12] = True
    old_target = np.zeros(array.shape, bool)
    old_target[3, 30:38, 2:10] = True
    old_target[1, 5:9, 5:9] = True
    for seg_name, mask in (("Area", area), ("Other", other), ("Hidden", hidden), ("Polyp", old_target)):
        mrml.write_mask_to_segment(seg, seg_name, mask, volume)
    ids = {n: seg.GetSegmentation().GetSegmentIdBySegmentName(n) for n in ("Area", "Other", "Hidden", "Polyp")}
    seg.GetDisplayNode().SetSegmentVisibility(ids["Hidden"], False)
    S, E = slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLSegmentEditorNode
    editor = _editor(slicer_scene, getattr(S, mode), getattr(E, overwrite),
                     ids[mask_segment] if mask_segment else "", intensity)
    names = ["Area", "Other", "Hidden", "Polyp"]
    before = {n: mrml.export_segment_labelmap(seg, volume, [n]) == 1 for n in names}
    include = _points(slicer_scene, "in", [_world(volume, (22, 20, 3))])
    rec = Recorder(engine)
    run_action("clicks", rec, input_node=volume, segmentation_node=seg, segment="Polyp",
               include=include, editor_node=editor)
    after = {n: mrml.export_segment_labelmap(seg, volume, [n]) == 1 for n in names}
    (computed,) = engine.segment_2d(array[3], rec.calls[0][1], intensity=rec.calls[0][2]["intensity"])
    assert computed.mask.any()

    union_all = area | other | hidden
    union_visible = area | other
    editable = {
        "EditAllowedInsideSingleSegment": area,
        "EditAllowedOutsideAllSegments": ~union_all,
        "EditAllowedEverywhere": np.ones(array.shape, bool),
        "EditAllowedInsideVisibleSegments": union_visible,
    }[mode].copy()
    editable[[k for k in range(array.shape[0]) if k != 3]] = False  # the write covers slice 3
    if intensity is not None:
        editable &= (array >= intensity[0]) & (array <= intensity[1])
    outside = ~editable
    for n in names:  # nothing changes outside the editable area, in any segment
        np.testing.assert_array_equal(after[n][outside], before[n][outside], err_msg=n)
    expected = np.where(editable[3], computed.mask, old_target[3])
    np.testing.assert_array_equal(after["Polyp"][3], expected)
    gained = editable & after["Polyp"]
    assert gained.any()  # the write did something inside the area
    if overwrite == "OverwriteNone":  # "allow overlap": no other segment changes at all
        for n in ("Area", "Other", "Hidden"):
            np.testing.assert_array_equal(after[n], before[n], err_msg=n)
    if overwrite == "OverwriteAllSegments":
        for n in ("Area", "Other", "Hidden"):
            assert not (after[n] & gained).any(), n
    if overwrite == "OverwriteVisibleSegments":
        assert not (after["Other"] & gained).any()
        np.testing.assert_array_equal(after["Hidden"], before["Hidden"])


def test_start_from_segment_seeds_propagation_and_a_click_reruns_one_side(slicer_scene, engine):
    from polypsam import mrml

    array = _lesion((9, 40, 48))
    volume = add_volume(slicer_scene, array, GRIDS["oblique"], name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    seed = np.zeros(array.shape, bool)
    seed[4, 14:26, 16:29] = True
    seed[3, 16:24, 18:27] = True
    mrml.write_mask_to_segment(seg, "Polyp", seed, volume)
    first = run_action("start-from-segment", engine, input_node=volume, segmentation_node=seg,
                       segment="Polyp", slice_range=(1, 7))
    out = first.propagation
    assert out.key_slice == 4 and out.tracked == {"backward": 3, "forward": 3}
    labels = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    np.testing.assert_array_equal(labels[4] == 1, seed[4])  # the seed is kept as it is
    np.testing.assert_array_equal(labels[1:8] == 1, out.labelmap.array[1:8] == 1)
    assert not labels[0].any() and not labels[8].any()
    # a click above the key slice: only the forward side is tracked again (the key prompt is
    # still the segment's own slice 4, which the propagation kept as it is)
    include = _points(slicer_scene, "in", [_world(volume, (22, 20, 6))])
    clicked = run_action("start-from-segment", engine, input_node=volume, segmentation_node=seg,
                         segment="Polyp", slice_range=(1, 7), key_slice=4, include=include,
                         previous=first)
    assert clicked.propagation.tracked == {"forward": 3}
    assert clicked.propagation.conditioning_slices == (4, 6)
    labels2 = mrml.export_segment_labelmap(seg, volume, ["Polyp"])
    np.testing.assert_array_equal(labels2[1:5], labels[1:5])  # the backward side is kept
    np.testing.assert_array_equal(labels2[5:8] == 1, clicked.propagation.labelmap.array[5:8] == 1)
    assert mrml.read_provenance(seg, "Polyp")["operation"] == "start-from-segment"
    with pytest.raises(Exception, match="empty or missing"):
        run_action("start-from-segment", engine, input_node=volume, segmentation_node=seg,
                   segment="Nothing")


def test_clicks_on_an_rgb_frame_with_a_box(slicer_scene, engine):
    import slicer

    from conftest import synthetic_rgb
    from polypsam import mrml
    from polypsam.engine import Prompt
    from slicer_fixtures import add_roi_on_ijk

    rgb = synthetic_rgb(60, 80, seed=44)
    frame = slicer_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "frame")
    slicer.util.updateVolumeFromArray(frame, rgb[None])
    roi = add_roi_on_ijk(slicer_scene, frame, (32, 30, 0), (30, 24, 1), "box")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    include = _points(slicer_scene, "in", [_world(frame, (31.5, 29.5, 0.2))])
    rec = Recorder(engine)
    result = run_action("clicks", rec, input_node=frame, segmentation_node=seg, segment="Polyp",
                        include=include, rois=[roi])
    ((image, (prompt,), _),) = rec.calls
    np.testing.assert_array_equal(image, rgb)
    assert prompt.points == ((31.5, 29.5),) and prompt.box is not None
    (expected,) = engine.segment_2d(rgb, [Prompt(box=prompt.box, points=[(31.5, 29.5)], labels=[1])])
    labels = mrml.export_segment_labelmap(seg, frame, ["Polyp"])
    np.testing.assert_array_equal(labels[0] == 1, expected.mask)
    assert result.segment == "Polyp" and "slice 0" in result.scores


def test_click_tools_make_one_include_and_one_exclude_list_per_segment(slicer_scene, slicer_core):
    from polypsam.mrml import clicks, scene

    include, exclude = clicks.click_lists(slicer_scene, "Polyp")
    assert include.IsA("vtkMRMLMarkupsFiducialNode") and exclude.IsA("vtkMRMLMarkupsFiducialNode")
    assert (include.GetAttribute(clicks.CLICK_ATTRIBUTE), exclude.GetAttribute(clicks.CLICK_ATTRIBUTE)) \
        == ("include", "exclude")
    assert clicks.click_lists(slicer_scene, "Polyp") == (include, exclude), "one pair per segment"
    other = clicks.click_lists(slicer_scene, "Polyp 2")
    assert set(other).isdisjoint({include, exclude})
    selection, interaction = slicer_core.app.GetSelectionNode(), slicer_core.app.GetInteractionNode()
    scene.place_clicks(selection, interaction, exclude)
    assert selection.GetActivePlaceNodeID() == exclude.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsFiducialNode"
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence()
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    interaction.SetPlaceModePersistence(0)
    with pytest.raises(Exception, match="segment"):
        clicks.click_lists(slicer_scene, "")


def test_box_operations_follow_segment_editor_masking_too(slicer_scene, engine):
    """Propagate from a box (the module's Propagate button) with the Segment Editor's node in the
    request: nothing outside the editable area changes, in any segment."""
    import slicer

    from polypsam import mrml
    from slicer_fixtures import add_roi_on_ijk

    array = _lesion()
    volume = add_volume(slicer_scene, array, GRIDS["flipped"], name="ct")
    seg = slicer_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
    area = np.zeros(array.shape, bool)
    area[:, 14:28, 14:30] = True
    other = np.zeros(array.shape, bool)
    other[2:5, 18:24, 20:40] = True
    mrml.write_mask_to_segment(seg, "Area", area, volume)
    mrml.write_mask_to_segment(seg, "Other", other, volume)
    editor = _editor(slicer_scene, slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment,
                     slicer.vtkMRMLSegmentEditorNode.OverwriteNone,
                     seg.GetSegmentation().GetSegmentIdBySegmentName("Area"))
    roi = add_roi_on_ijk(slicer_scene, volume, (22, 20, 3), (20, 18, 5), "Polyp")
    before = {n: mrml.export_segment_labelmap(seg, volume, [n]) == 1 for n in ("Area", "Other")}
    mrml.run(mrml.Request("propagate", input_node=volume, rois=[roi], segmentation_node=seg,
                          window_preset="abdomen", editor_node=editor), engine)
    polyp = mrml.export_segment_labelmap(seg, volume, ["Polyp"]) == 1
    assert polyp.any() and not (polyp & ~area).any(), "written only inside the editable area"
    for n, mask in before.items():
        np.testing.assert_array_equal(mrml.export_segment_labelmap(seg, volume, [n]) == 1, mask)
    assert mrml.undo(seg)
    assert not seg.GetSegmentation().GetSegmentIdBySegmentName("Polyp")
