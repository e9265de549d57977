"""Key-slice propagation and two-way tracking (polypsam.propagation).

Most structure tests use a scripted fake engine (the module is engine-agnostic, and the fake makes
every expected voxel known); the SAM2 tests run the real engine with random weights on small real
CT crops and a few video frames, and check structure and geometry, not accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from polypsam.engine import CancelToken, EngineInfo, FrameMasks, FramePrompt, MaskResult, as_prompts
from polypsam.errors import CancelledError, InvalidInputError
from polypsam.geometry import Box, Volume, VolumeGeometry, box_of_mask
from polypsam.propagation import largest_components, propagate, track


def box_mask(shape, box: Box) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[int(box.y0) : int(box.y1) + 1, int(box.x0) : int(box.x1) + 1] = True
    return m


def prompt_mask(shape, p) -> np.ndarray:
    """The fake engine's answer to a prompt: the box, else the mask, else 5x5 around each include click."""
    if p.box is not None:
        return box_mask(shape, p.box)
    if p.mask is not None:
        return np.asarray(p.mask, bool)
    m = np.zeros(shape, bool)
    for (x, y), label in zip(p.points, p.labels):
        if label == 1:
            m[max(int(y) - 2, 0) : int(y) + 3, max(int(x) - 2, 0) : int(x) + 3] = True
    return m


class FakeEngine:
    """Scripted engine: segment_2d fills the box; track copies the nearest prompt mask.

    Tracked masks shrink by one pixel per frame of distance from the nearest prompt and vanish
    beyond ``reach`` frames; the score is ``10 - distance`` (+ object id / 100 to break ties).
    """

    info = EngineInfo("fake", "fake", "fake", "", "", 0, "cpu", "0")

    def __init__(self, reach: int = 1000, box_scores=None):
        self.reach = reach
        self.box_scores = box_scores or {}
        self.calls: list[dict] = []
        self.segment_calls: list[int] = []

    def segment_2d(self, image, prompts, *, intensity=None, multimask=False):
        self.segment_calls.append(id(image))
        out = []
        for i, p in enumerate(as_prompts(prompts, image.shape[1], image.shape[0])):
            out.append(MaskResult(prompt_mask(image.shape[:2], p), self.box_scores.get(i, 0.9), p.box, p))
        return out

    def track(self, frames, prompts, *, start_frame, reverse=False, max_frames=None,
              intensity=None, cancel=None):
        self.calls.append(dict(prompts=[(p.frame, p.obj_id) for p in prompts], start=start_frame,
                               reverse=reverse, max_frames=max_frames))
        n = len(frames)
        step = -1 if reverse else 1
        end = 0 if reverse else n - 1
        if max_frames is not None:
            end = max(start_frame - max_frames, 0) if reverse else min(start_frame + max_frames, n - 1)
        for f in range(start_frame, end + step, step):
            if cancel is not None:
                cancel.raise_if_cancelled()
            frame = frames[f]
            masks, scores = {}, {}
            for obj in sorted({p.obj_id for p in prompts}):
                near = min((p for p in prompts if p.obj_id == obj), key=lambda p: abs(p.frame - f))
                d = abs(near.frame - f)
                m = np.zeros(frame.shape[:2], bool)
                if d <= self.reach:
                    src = prompt_mask(frame.shape[:2], near)
                    ys, xs = np.nonzero(src)
                    if ys.size:
                        m[ys.min() + d : ys.max() + 1 - d, xs.min() + d : xs.max() + 1 - d] = True
                masks[obj] = m
                scores[obj] = 10.0 - d + obj / 100
            yield FrameMasks(f, masks, scores)

    def close(self):
        pass


@pytest.fixture
def vol():
    rng = np.random.default_rng(0)
    return Volume(rng.normal(size=(21, 40, 50)).astype(np.float32),
                  VolumeGeometry((10.0, -5.0, 3.0), (0.8, 0.7, 2.5)))


# -- structure (fake engine) -------------------------------------------------------------------
def test_key_slice_range_and_halves_meet(vol):
    eng = FakeEngine()
    box = Box(10, 8, 30, 28)
    res = propagate(eng, vol, box, (4, 16))
    assert res.key_slice == 10 and res.slices == (4, 16)
    lab = res.labelmap.array
    assert lab.shape == vol.shape and lab.dtype == np.uint8
    assert res.labelmap.geometry == vol.geometry
    # only slices in range written
    assert not lab[:4].any() and not lab[17:].any()
    assert all(lab[k].any() for k in range(4, 17))
    # key slice = 2-D result
    np.testing.assert_array_equal(lab[10], box_mask(lab.shape[1:], box).astype(np.uint8))
    # backward and forward passes from the key slice, each covering its half
    backward, forward = eng.calls
    assert backward == dict(prompts=[(10, 1)], start=10, reverse=True, max_frames=6)
    assert forward == dict(prompts=[(10, 1)], start=10, reverse=False, max_frames=6)
    # halves meet symmetrically at the key slice: slice 10-d equals slice 10+d
    for d in range(1, 7):
        np.testing.assert_array_equal(lab[10 - d], lab[10 + d])
    assert set(res.slice_scores) == set(range(4, 17))


def test_explicit_key_slice_and_edges(vol):
    eng = FakeEngine()
    res = propagate(eng, vol, Box(10, 8, 30, 28), (0, 20), key_slice=0)
    assert res.key_slice == 0 and res.slices == (0, 20)
    assert [c["reverse"] for c in eng.calls] == [False]  # nothing before slice 0
    res = propagate(FakeEngine(), vol, Box(10, 8, 30, 28), (7, 7))
    assert res.slices == (7, 7) and res.labelmap.array[7].any()
    assert res.labelmap.array.sum() == res.labelmap.array[7].sum()


def test_several_objects_keep_separate_labels_and_overlap_goes_to_higher_score(vol):
    eng = FakeEngine(box_scores={0: 0.5, 1: 0.8})
    a, b = Box(2, 2, 20, 20), Box(15, 15, 40, 35)
    res = propagate(eng, vol, [a, b], (8, 12))
    lab = res.labelmap.array
    assert set(np.unique(lab)) == {0, 1, 2}
    key = lab[10]
    overlap = box_mask(key.shape, a) & box_mask(key.shape, b)
    assert (key[overlap] == 2).all()  # object 2 scored higher on the key slice
    assert (key[box_mask(key.shape, a) & ~overlap] == 1).all()
    assert res.scores == {1: 0.5, 2: 0.8}
    # on tracked slices the fake's scores favour object 2 (10 - d + 2/100)
    # (slice 12: both masks shrunk by 2 px, they overlap on rows/cols 17..18)
    assert (lab[12][17:19, 17:19] == 2).all() and lab[12][16, 16] == 1
    many = propagate(FakeEngine(), vol, [Box(0, 0, 2, 2)] * 300, (10, 10))
    assert many.labelmap.array.dtype == np.uint16


def test_refinement_changes_only_its_side(vol):
    box = Box(10, 8, 30, 28)
    base = propagate(FakeEngine(), vol, box, (2, 18)).labelmap.array
    ref_mask = box_mask(vol.shape[1:], Box(20, 20, 45, 38))
    eng = FakeEngine()
    res = propagate(eng, vol, box, (2, 18), refinements=[FramePrompt(15, 1, mask=ref_mask)])
    lab = res.labelmap.array
    assert res.conditioning_slices == (10, 15)
    backward, forward = eng.calls
    assert backward["prompts"] == [(10, 1)]
    assert forward["prompts"] == [(10, 1), (15, 1)]
    np.testing.assert_array_equal(lab[:11], base[:11])  # backward half and key unchanged
    np.testing.assert_array_equal(lab[15], ref_mask.astype(np.uint8))  # the refinement itself
    assert not np.array_equal(lab[16:19], base[16:19])  # beyond it follows the refinement
    # a box refinement conditions the tracker (add_new_points_or_box); its slice is the tracked mask
    res = propagate(FakeEngine(), vol, box, (2, 18), refinements=[FramePrompt(4, 1, box=Box(1, 1, 9, 9))])
    np.testing.assert_array_equal(res.labelmap.array[4], box_mask(vol.shape[1:], Box(1, 1, 9, 9)))
    np.testing.assert_array_equal(res.labelmap.array[10:], base[10:])


def test_clicks_and_masks_as_key_prompts_and_refinements(vol):
    from polypsam.engine import Prompt

    seed = box_mask(vol.shape[1:], Box(12, 10, 26, 24))
    eng = FakeEngine()
    click = FramePrompt(14, 1, points=[(20, 18), (3, 3)], labels=[1, 0])
    res = propagate(eng, vol, [Prompt(mask=seed), Prompt(points=[(40, 30)], labels=[1])], (2, 18),
                    refinements=[click])
    lab = res.labelmap.array
    np.testing.assert_array_equal(lab[10] == 1, seed)  # an existing segment seeds as it is
    assert res.scores == {1: 1.0, 2: 0.9}  # a mask taken as it is scores like SAM2's mask input
    assert eng.segment_calls and len(eng.segment_calls) == 1  # only object 2 went through 2-D
    backward, forward = eng.calls
    assert backward["prompts"] == [(10, 1), (10, 2)]
    assert forward["prompts"] == [(10, 1), (10, 2), (14, 1)]  # the clicks condition the tracker
    assert res.conditioning_slices == (10, 14)
    np.testing.assert_array_equal(lab[14] == 1, prompt_mask(vol.shape[1:], click))
    with pytest.raises(InvalidInputError, match="key prompt"):
        propagate(FakeEngine(), vol, Box(1, 1, 9, 9), (2, 18),
                  refinements=[FramePrompt(10, 1, points=[(5, 5)], labels=[1])])
    with pytest.raises(InvalidInputError, match=r"object 1 on frame 12: point \(60, 5\) lies outside"):
        propagate(FakeEngine(), vol, Box(1, 1, 9, 9), (2, 18),
                  refinements=[FramePrompt(12, 1, points=[(60, 5)], labels=[1])])


def test_repropagation_reruns_only_the_affected_direction(vol):
    box = Box(10, 8, 30, 28)
    first = propagate(FakeEngine(), vol, box, (2, 18))
    assert first.tracked == {"backward": 8, "forward": 8}
    above = [FramePrompt(15, 1, points=[(22, 20)], labels=[1])]
    eng = FakeEngine()
    again = propagate(eng, vol, box, (2, 18), refinements=above, previous=first)
    assert [c["reverse"] for c in eng.calls] == [False] and again.tracked == {"forward": 8}
    full = propagate(FakeEngine(), vol, box, (2, 18), refinements=above)
    np.testing.assert_array_equal(again.labelmap.array, full.labelmap.array)
    assert again.slice_scores == full.slice_scores and again.side_digests == full.side_digests
    # below the key now: only backward; nothing new: nothing tracked
    both = above + [FramePrompt(4, 1, mask=box_mask(vol.shape[1:], Box(5, 5, 20, 20)))]
    eng = FakeEngine()
    third = propagate(eng, vol, box, (2, 18), refinements=both, previous=again)
    assert [c["reverse"] for c in eng.calls] == [True]
    np.testing.assert_array_equal(
        third.labelmap.array, propagate(FakeEngine(), vol, box, (2, 18), refinements=both).labelmap.array)
    eng = FakeEngine()
    same = propagate(eng, vol, box, (2, 18), refinements=both, previous=third)
    assert eng.calls == [] and same.tracked == {}
    np.testing.assert_array_equal(same.labelmap.array, third.labelmap.array)
    # a changed key prompt re-runs both; explicit directions override
    eng = FakeEngine()
    propagate(eng, vol, Box(11, 8, 30, 28), (2, 18), refinements=both, previous=third)
    assert [c["reverse"] for c in eng.calls] == [True, False]
    eng = FakeEngine()
    propagate(eng, vol, box, (2, 18), directions=["forward"])
    assert [c["reverse"] for c in eng.calls] == [False]
    with pytest.raises(InvalidInputError, match="directions"):
        propagate(FakeEngine(), vol, box, (2, 18), directions=["up"])


def test_affected_directions():
    from polypsam.propagation import affected_directions

    assert affected_directions(10, [12]) == ("forward",)
    assert affected_directions(10, [3, 4]) == ("backward",)
    assert affected_directions(10, [10]) == ("backward", "forward")
    assert affected_directions(10, []) == ()


def test_until_lost_continues_beyond_range_while_found(vol):
    eng = FakeEngine(reach=5)  # object found up to 5 slices from the key
    res = propagate(eng, vol, Box(10, 8, 30, 28), (9, 11), until="lost")
    lab = res.labelmap.array
    assert res.slices == (5, 15)
    assert all(lab[k].any() for k in range(5, 16))
    assert not lab[:5].any() and not lab[16:].any()
    assert all(c["max_frames"] is None for c in eng.calls)
    # until="range" stops at the range even though the object is still found
    assert propagate(FakeEngine(reach=5), vol, Box(10, 8, 30, 28), (9, 11)).slices == (9, 11)


def test_largest_component():
    lab = np.zeros((5, 10, 10), np.uint8)
    lab[1:4, 1:4, 1:4] = 1
    lab[0, 8, 8] = 1
    lab[2, 7:9, 6:9] = 2
    out = largest_components(lab)
    assert out[0, 8, 8] == 0 and (out[1:4, 1:4, 1:4] == 1).all()
    assert (out == 2).sum() == 6


def test_progress_and_cancel(vol):
    seen = []
    propagate(FakeEngine(), vol, Box(10, 8, 30, 28), (4, 8), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (5, 5) and len(seen) == 5
    token = CancelToken()

    def cancel_after_two(done, total):
        if done == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        propagate(FakeEngine(), vol, Box(10, 8, 30, 28), (4, 16), progress=cancel_after_two, cancel=token)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((Box(1, 1, 9, 9), (2, 8)), dict(key_slice=9), "key slice 9 lies outside"),
        ((Box(1, 1, 9, 9), (5, 25)), {}, "outside the volume"),
        ((Box(1, 1, 9, 9), (-1, 3)), {}, "outside the volume"),
        ((Box(1, 1, 9, 9), (8, 2)), {}, "inverted"),
        ((Box(1, 1, 60, 9), (2, 8)), {}, "outside the image"),
        ((Box(1, 1, 9, 9), (2, 8)), dict(until="forever"), "until"),
        ((Box(1, 1, 9, 9), (2, 8)), dict(refinements=[FramePrompt(12, 1, box=Box(1, 1, 5, 5))]), "outside 2..8"),
        ((Box(1, 1, 9, 9), (2, 8)), dict(refinements=[FramePrompt(3, 2, box=Box(1, 1, 5, 5))]), "objects are numbered"),
        ((Box(1, 1, 9, 9), (2, 8)), dict(refinements=[FramePrompt(3, 1, mask=np.ones((3, 3), bool))]), "shape"),
        (([], (2, 8)), {}, "at least one box"),
    ],
)
def test_bad_propagate_input(vol, args, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        propagate(FakeEngine(), vol, *args, **kwargs)


def test_bad_arrays():
    with pytest.raises(InvalidInputError, match="2-D image"):
        propagate(FakeEngine(), np.zeros((30, 30)), Box(1, 1, 9, 9))
    with pytest.raises(InvalidInputError, match="3-D"):
        propagate(FakeEngine(), np.zeros((3, 30, 30, 2)), Box(1, 1, 9, 9))
    # a plain 3-D array is accepted (identity geometry)
    assert propagate(FakeEngine(), np.zeros((3, 30, 30)), Box(1, 1, 9, 9)).labelmap.shape == (3, 30, 30)


def test_track_structure_and_bad_input():
    frames = [np.full((30, 40, 3), i, np.uint8) for i in range(9)]
    eng = FakeEngine()
    res = track(eng, frames, 3, [Box(5, 5, 20, 20), Box(22, 5, 35, 25)])
    assert res.labels.shape == (9, 30, 40) and res.frame_index == 3
    assert set(np.unique(res.labels[3])) == {0, 1, 2}
    assert sorted(res.frame_scores) == list(range(9))
    assert [(c["start"], c["reverse"], c["max_frames"]) for c in eng.calls] == [(3, True, 3), (3, False, 5)]
    with pytest.raises(InvalidInputError, match="empty"):
        track(FakeEngine(), [], 0, Box(1, 1, 5, 5))
    with pytest.raises(InvalidInputError, match="outside the sequence"):
        track(FakeEngine(), frames, 9, Box(1, 1, 5, 5))
    with pytest.raises(InvalidInputError, match="outside the image"):
        track(FakeEngine(), frames, 0, Box(1, 1, 50, 5))
    odd = frames[:4] + [np.zeros((30, 41, 3), np.uint8)]
    with pytest.raises(InvalidInputError, match="same size"):
        track(FakeEngine(), odd, 0, Box(1, 1, 5, 5))


# -- geometry ----------------------------------------------------------------------------------
def _oblique_flipped_direction() -> tuple:
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, -1.0])  # J and K flipped
    return tuple((rot @ flip).ravel())


def test_geometry_survives_oblique_flipped_volume_in_physical_space(tmp_path):
    import SimpleITK as sitk

    from polypsam import io

    geom = VolumeGeometry((-12.5, 40.0, 101.0), (0.6, 0.9, 3.0), _oblique_flipped_direction())
    vol = Volume(np.random.default_rng(1).normal(size=(9, 32, 48)).astype(np.float32), geom)
    box = Box(5, 7, 20, 25)
    res = propagate(FakeEngine(), vol, box, (2, 6))
    out = io.write_volume(res.labelmap, tmp_path / "seg.nrrd")
    src = io.write_volume(vol, tmp_path / "img.nii.gz")
    seg_img, src_img = sitk.ReadImage(str(out)), sitk.ReadImage(str(src))
    assert seg_img.GetSize() == src_img.GetSize() == (48, 32, 9)
    np.testing.assert_allclose(seg_img.GetOrigin(), src_img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg_img.GetSpacing(), src_img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg_img.GetDirection(), src_img.GetDirection(), atol=1e-6)
    # the box corner voxel (i=x0, j=y0, k=key) maps to the same physical point in both
    arr = sitk.GetArrayFromImage(seg_img)
    assert arr[4, 7, 5] == 1 and arr[4, 6, 5] == 0 and arr[4, 7, 4] == 0
    p_seg = seg_img.TransformIndexToPhysicalPoint((5, 7, 4))
    p_src = src_img.TransformIndexToPhysicalPoint((5, 7, 4))
    np.testing.assert_allclose(p_seg, p_src, atol=1e-4)
    np.testing.assert_allclose((geom.ijk_to_lps() @ np.array([5, 7, 4, 1.0]))[:3], p_seg, atol=1e-4)


# -- SAM2 (random weights) on real data ----------------------------------------------------------
def _lesion_case(shared_data):
    from polypsam import io

    img = io.read_volume(shared_data / "ct/medsam2_deeplesion/CT_Lesion_000015_01_01_103-115_img.nii.gz")
    les = io.read_volume(shared_data / "ct/medsam2_deeplesion/CT_Lesion_000015_01_01_103-115_lesion.nii.gz")
    return img, les.array > 0


def test_sam2_lesion_propagation_geometry_and_key_slice(engine, shared_data, tmp_path):
    import SimpleITK as sitk

    from polypsam import io

    img, lesion = _lesion_case(shared_data)
    ks = np.nonzero(lesion.any(axis=(1, 2)))[0]
    key = int(ks[len(ks) // 2])
    lesion_box = box_of_mask(lesion[key])
    other = Box(10, 10, 60, 60)
    k0, k1 = key - 1, key + 1
    res = propagate(engine, img, [lesion_box, other], (k0, k1))
    lab = res.labelmap.array
    assert lab.shape == img.shape and res.labelmap.geometry == img.geometry
    assert not lab[:k0].any() and not lab[k1 + 1 :].any()
    # the key slice is exactly the 2-D result (same window as propagate used)
    from polypsam.overlay import labelmap_from_masks
    from polypsam.preprocess import volume_intensity

    window = volume_intensity(img.array[k0 : k1 + 1], None)
    two_d = engine.segment_2d(img.array[key], [lesion_box, other], intensity=window)
    np.testing.assert_array_equal(lab[key], labelmap_from_masks(two_d))
    assert res.scores == {1: two_d[0].score, 2: two_d[1].score}
    assert set(res.slice_scores) == set(range(k0, k1 + 1))
    assert set(np.unique(lab)) <= {0, 1, 2}
    # physical space: the written labelmap sits on the input's grid
    out = io.write_volume(res.labelmap, tmp_path / "lesion_seg.nrrd")
    seg = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(shared_data / "ct/medsam2_deeplesion/CT_Lesion_000015_01_01_103-115_img.nii.gz"))
    assert seg.GetSize() == ref.GetSize()
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-5)


def test_sam2_reoriented_ct_and_dicom_series(engine, shared_data):
    import SimpleITK as sitk

    from polypsam import io

    ct = sitk.ReadImage(str(shared_data / "ct/totalsegmentator/example_ct_sm.nii.gz"))
    flipped = sitk.Flip(ct, [False, True, True])  # flips J and K in index space: new direction
    flipped.SetDirection(_oblique_flipped_direction())
    vol = io.volume_from_sitk(flipped)
    res = propagate(engine, vol, Box(30, 30, 70, 60), (12, 14), largest_component=True)
    seg = io.volume_to_sitk(res.labelmap)
    assert seg.GetSize() == flipped.GetSize()
    np.testing.assert_allclose(seg.GetDirection(), flipped.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(seg.GetOrigin(), flipped.GetOrigin(), atol=1e-9)
    assert not res.labelmap.array[:12].any() and not res.labelmap.array[15:].any()

    dicom = io.read_volume(shared_data / "ct/totalsegmentator/example_ct_dicom")
    res = propagate(engine, dicom, Box(200, 200, 300, 320), (9, 10), key_slice=10)
    assert res.labelmap.shape == dicom.shape and res.labelmap.geometry == dicom.geometry
    assert res.slices == (9, 10)


def test_sam2_track_video_frames(engine, shared_data, manifest):
    from polypsam.frames import read_frames

    info = manifest["video"] if isinstance(manifest["video"], dict) else manifest["video"][0]
    frames = read_frames(shared_data / info["dir"] / "frames")
    assert len(frames) == 25
    few = [frames[i] for i in range(10, 14)]
    box = Box(*info["bbox_xyxy_per_frame"][11])
    res = track(engine, few, 1, box)
    assert res.labels.shape == (4, 288, 384)
    two_d = engine.segment_2d(few[1], [box])
    np.testing.assert_array_equal(res.labels[1], two_d[0].mask.astype(np.uint8))
    assert sorted(res.frame_scores) == [0, 1, 2, 3]


def test_retracking_frames_reruns_only_the_affected_direction():
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 255, size=(30, 40, 3)).astype(np.uint8) for _ in range(9)]
    first = track(FakeEngine(), frames, 4, Box(5, 5, 20, 20))
    assert first.tracked == {"backward": 4, "forward": 4}
    below = [FramePrompt(1, 1, points=[(10, 12)], labels=[1])]
    eng = FakeEngine()
    again = track(eng, frames, 4, Box(5, 5, 20, 20), refinements=below, previous=first)
    assert [c["reverse"] for c in eng.calls] == [True] and again.tracked == {"backward": 4}
    full = track(FakeEngine(), frames, 4, Box(5, 5, 20, 20), refinements=below)
    np.testing.assert_array_equal(again.labels, full.labels)
    assert again.frame_scores == full.frame_scores
