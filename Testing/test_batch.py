"""``polypsam batch`` on shared data: outputs per case, resume, failures, Dask (random-weight SAM2).

Polyp frames from Kvasir-SEG and CVC-ClinicDB, a DeepLesion CT (3 slices), 3 frames of a
CVC-ClinicDB sequence; the model is the random-weight tiny SAM2 at image size 256, so masks are
meaningless but every path (reading, prompting, propagation, writing, scheduling) is real.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
from polypsam import cli
from polypsam.batch import BatchPlan, read_manifest, run_batch
from polypsam.engines import settings_for
from polypsam.errors import InvalidInputError

LESION = "ct/medsam2_deeplesion/CT_Lesion_000015_01_01_103-115"
HEADER = ["case_id", "input", "task", "boxes", "slices", "key_slice", "frame", "reference",
          "window"]


# Model calls of the reference run and of the CLI runs compared with it use this many torch
# threads: not this machine's default (results may differ by a voxel between thread counts), so
# a worker matching an in-process run shows that the count travels with the case.
THREADS = 3


def engine_args(checkpoint) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--config", TINY_CONFIG, "--device", "cpu",
            "--image-size", str(TEST_IMAGE_SIZE), "--threads", str(THREADS)]


POINT_COLUMNS = ["points", "negative_points", "slice_points", "slice_negative_points",
                 "frame_points", "frame_negative_points"]


def write_manifest(path: Path, rows: list[dict], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def box_text(box) -> str:
    return " ".join(str(v) for v in box)


@pytest.fixture(scope="module")
def cases(shared_data, manifest, tmp_path_factory) -> dict[str, dict]:
    """Manifest rows on shared data: two polyp frames, a CT lesion (3 slices), 3 video frames."""
    polyps = {p["dataset"]: p for p in manifest["polyp"]}
    video = manifest["video"] if isinstance(manifest["video"], dict) else manifest["video"][0]
    frames = tmp_path_factory.mktemp("frames")
    masks = tmp_path_factory.mktemp("frame-masks")
    for name in ("030.png", "031.png", "032.png"):
        shutil.copy(shared_data / video["dir"] / "frames" / name, frames / name)
        shutil.copy(shared_data / video["dir"] / "masks" / name, masks / name)
    import SimpleITK as sitk

    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / f"{LESION}_lesion.nii.gz")))
    ys, xs = np.nonzero(lesion[6])
    rows = {}
    for name, info in (("kvasir", polyps["kvasir_seg"]), ("cvc", polyps["cvc_clinicdb"])):
        rows[name] = {"case_id": name, "input": str(shared_data / info["image"]),
                      "boxes": box_text(info["bbox_xyxy"]),
                      "reference": str(shared_data / info["mask"])}
    rows["lesion"] = {"case_id": "lesion", "input": str(shared_data / f"{LESION}_img.nii.gz"),
                      "task": "propagate", "boxes": f"{xs.min()} {ys.min()} {xs.max()} {ys.max()}",
                      "slices": "5 7", "key_slice": "6",
                      "reference": str(shared_data / f"{LESION}_lesion.nii.gz")}
    rows["clip"] = {"case_id": "clip", "input": str(frames), "frame": "1",
                    "boxes": box_text(video["bbox_xyxy_per_frame"][5]), "reference": str(masks)}
    return rows


class CountingEngine:
    """The real session engine, counting calls; can raise KeyboardInterrupt (Ctrl-C) on call N."""

    def __init__(self, engine, interrupt_at: int | None = None) -> None:
        self._engine = engine
        self.calls = 0
        self.interrupt_at = interrupt_at

    @property
    def info(self):
        return self._engine.info

    def segment_2d(self, image, boxes, *, intensity=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self._engine.segment_2d(image, boxes, intensity=intensity)

    def track(self, *args, **kwargs):
        return self._engine.track(*args, **kwargs)

    def close(self) -> None:
        pass


def plan_for(outdir: Path, checkpoint, threads: int = 0) -> BatchPlan:
    settings = settings_for(checkpoint, TINY_CONFIG, device="cpu", image_size=TEST_IMAGE_SIZE)
    return BatchPlan(outdir=outdir, settings=settings, threads=threads)


def read_labels(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    if path.is_dir():
        return np.stack([read_labels(p) for p in sorted(path.glob("*.png"))])
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# -- manifest ---------------------------------------------------------------------------------
def test_manifest_rows_are_checked_one_by_one(shared_data, manifest, tmp_path):
    polyp = manifest["polyp"][0]
    image = tmp_path / "frame one.jpg"
    shutil.copy(shared_data / polyp["image"], image)
    good = {"input": "frame one.jpg", "boxes": "10 10 50 50; 60,60,90,90"}  # relative path
    rows = [
        good,
        {**good, "case_id": "dup"},
        {**good, "case_id": "dup"},
        {**good, "task": "explode"},
        {"input": "missing.png", "boxes": "1 1 5 5"},
        {**good, "boxes": "1 2 3"},
        {**good, "boxes": ""},
        {**good, "case_id": "../evil"},
        {**good, "slices": "1 3"},
        {**good, "task": "track"},
        {"input": str(shared_data / f"{LESION}_img.nii.gz"), "boxes": "1 1 9 9",
         "slices": "4 6", "key_slice": "9"},
        {"input": str(shared_data / f"{LESION}_img.nii.gz"), "boxes": "1 1 9 9",
         "slices": "4 6", "reference": "nope.nii.gz"},
        {**good, "case_id": "summary.csv"},
        {**good, "case_id": "windowed", "window": "lung"},
        {**good, "case_id": "badwindow", "window": "brightest"},
    ]
    parsed = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    assert [c.case_id for c in parsed.cases] == ["frame_one", "dup", "windowed"]
    assert parsed.cases[2].window == "lung"
    first = parsed.cases[0]
    assert first.input == image.resolve() and first.kind == "image" and first.task == "segment"
    assert [b.to_list() for b in first.boxes] == [[10, 10, 50, 50], [60, 60, 90, 90]]
    errors = {e.row: e.message for e in parsed.errors}
    assert "case_id dup is also used on line 3" in errors[4]
    assert "unknown task 'explode'" in errors[5]
    assert "input not found" in errors[6] and "missing.png" in errors[6]
    assert "a box needs 4 numbers" in errors[7]
    assert "no prompt: give boxes" in errors[8]
    assert "case_id '../evil'" in errors[9]
    assert "apply to volumes" in errors[10]
    assert "task track does not apply to an image" in errors[11]
    assert "key_slice 9 lies outside slices 4..6" in errors[12]
    assert "reference not found" in errors[13]
    assert "name of a batch output file" in errors[14]
    assert "brightest" in errors[16]
    assert len(parsed.errors) == 12


def test_a_folder_that_is_not_a_case_folder_is_left_alone(cases, engine, tiny_checkpoint,
                                                          tmp_path):
    out = tmp_path / "out"
    (out / "cvc").mkdir(parents=True)
    (out / "cvc" / "notes.txt").write_text("mine")
    parsed = read_manifest(write_manifest(tmp_path / "m.csv", [cases["cvc"]]))
    counting = CountingEngine(engine)
    report = run_batch(parsed, plan_for(out, tiny_checkpoint), engine=counting)
    assert report.results[0].status == "failed" and counting.calls == 0
    assert "is not a PolypSAM case folder" in report.results[0].error
    assert (out / "cvc" / "notes.txt").read_text() == "mine"


def test_manifest_file_level_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "a.csv").write_text("input,boxs\nx.png,1 1 2 2\n")
    with pytest.raises(InvalidInputError, match="unknown column 'boxs': did you mean boxes"):
        read_manifest(tmp_path / "a.csv")
    (tmp_path / "c.csv").write_text("input,boxes,key_slcie\nx.png,1 1 2 2,3\n")
    with pytest.raises(InvalidInputError, match="'key_slcie': did you mean key_slice"):
        read_manifest(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("input,boxes,Boxes\nx.png,1 1 2 2,3\n")
    with pytest.raises(InvalidInputError, match="boxes appear twice"):
        read_manifest(tmp_path / "d.csv")
    (tmp_path / "b.csv").write_text("input,task\nx.png,segment\n")
    with pytest.raises(InvalidInputError, match="needs a boxes or points column"):
        read_manifest(tmp_path / "b.csv")


# -- in-process batch: outputs, failures, interruption, resume --------------------------------
def test_batch_outputs_failures_and_resume(cases, engine, tiny_checkpoint, tmp_path):
    rows = [cases["kvasir"], cases["cvc"],
            {**cases["cvc"], "case_id": "outside", "boxes": "40 155 463 279", "reference": ""},
            cases["clip"],
            {"case_id": "gone", "input": str(tmp_path / "gone.png"), "boxes": "1 1 5 5"}]
    parsed = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    out = tmp_path / "out"
    plan = plan_for(out, tiny_checkpoint)

    # run 1 is interrupted (Ctrl-C) inside the second case: the first stays finished
    interrupting = CountingEngine(engine, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_batch(parsed, plan, engine=interrupting)
    assert json.loads((out / "kvasir" / "case.json").read_text())["status"] == "ok"
    assert (out / "cvc").is_dir() and not (out / "cvc" / "case.json").exists()
    kvasir_mtime = (out / "kvasir" / "mask.png").stat().st_mtime_ns

    # run 2 resumes: kvasir is skipped, the rest runs; bad rows are reported, the batch goes on
    counting = CountingEngine(engine)
    seen = []
    report = run_batch(parsed, plan, engine=counting, on_result=lambda r: seen.append(r.case_id))
    status = {r.case_id: r.status for r in report.results}
    assert status == {"kvasir": "skipped", "cvc": "ok", "outside": "failed", "clip": "ok"}
    assert sorted(seen) == sorted(status)
    assert counting.calls == 2  # cvc and the clip's prompted frame
    assert (out / "kvasir" / "mask.png").stat().st_mtime_ns == kvasir_mtime
    assert report.failed == 2 and [e.row for e in report.row_errors] == [6]

    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert {f["case_id"]: f["row"] for f in failures} == {"outside": "4", "gone": "6"}
    outside = next(f for f in failures if f["case_id"] == "outside")
    assert "lies outside the image" in outside["error"] and "384x288" in outside["error"]
    assert "input not found" in next(f for f in failures if f["case_id"] == "gone")["error"]
    assert "FAILED case outside" in (out / "batch.log").read_text()
    summary = {r["case_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == set(status) | {"gone"} and summary["clip"]["outputs"] == "masks"
    assert summary["gone"]["status"] == "invalid" and summary["gone"]["row"] == "6"

    # outputs: frame masks of the frame size, one mask per frame of the sequence
    for name in ("kvasir", "cvc"):
        mask = read_labels(out / name / "mask.png")
        image = read_labels(Path(cases[name]["input"]))
        assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 1}
    assert sorted(p.name for p in (out / "clip" / "masks").glob("*.png")) == [
        "030.png", "031.png", "032.png"]
    record = json.loads((out / "clip" / "case.json").read_text())
    assert record["task"] == "track" and record["frame"] == 1 and record["frames_written"] == 3
    assert engine.info.provenance().items() <= record["provenance"].items()

    # run 3: everything finished is skipped without a model call; failed cases run again
    counting = CountingEngine(engine)
    report = run_batch(parsed, plan, engine=counting)
    assert report.count("skipped") == 3 and report.count("failed") == 1
    assert counting.calls == 0

    # a finished case whose output vanished, or whose row changed, runs again (only that case)
    (out / "cvc" / "mask.png").unlink()
    rows[0] = {**cases["kvasir"], "boxes": "40 10 300 300"}
    parsed = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    counting = CountingEngine(engine)
    report = run_batch(parsed, plan, engine=counting)
    assert {r.case_id for r in report.results if r.status == "ok"} == {"cvc", "kvasir"}
    assert counting.calls == 2
    record = json.loads((out / "kvasir" / "case.json").read_text())
    assert record["prompts"]["boxes"] == [[40, 10, 300, 300]]

    # evaluation pairs frame masks with the reference folder by name (sequences frame by frame)
    pytest.importorskip("matplotlib")
    from polypsam.batch.evaluate import evaluate_batch

    (metrics_csv, plot), summary = evaluate_batch(report, out, tolerance_mm=2.0)
    with metrics_csv.open() as fh:
        scored = sorted(r["case"] for r in csv.DictReader(fh))
    assert scored == ["clip/030", "clip/031", "clip/032", "cvc", "kvasir"]
    assert plot.is_file() and "dice" in summary
    # the clip's three frames count as one case next to the two frames (--frame-weighting video)
    assert "1 video(s): the frames of a video are averaged first" in summary
    assert [line.split()[:2] for line in summary.splitlines() if line.startswith("    1")] == [
        ["1", "3"]]


def test_summary_lists_every_row_extra_columns_are_kept_and_the_log_always_exists(
        cases, engine, tiny_checkpoint, tmp_path):
    header = HEADER + ["notes", "Patient ID"]
    rows = [{**cases["cvc"], "reference": "", "notes": "first, with a comma", "Patient ID": "P1"},
            {"case_id": "gone", "input": str(tmp_path / "gone.png"), "boxes": "1 1 5 5",
             "notes": "bad row", "Patient ID": "P2"},
            {**cases["kvasir"], "reference": "", "Patient ID": "P3"},
            {**cases["cvc"], "case_id": "cvc2", "reference": "", "Patient ID": "P4"}]
    parsed = read_manifest(write_manifest(tmp_path / "m.csv", rows, header))
    assert parsed.extra_columns == ["notes", "Patient ID"] and len(parsed.errors) == 1
    out = tmp_path / "out"
    plan = plan_for(out, tiny_checkpoint)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the second case (kvasir)
        run_batch(parsed, plan, engine=CountingEngine(engine, interrupt_at=2))

    def summary() -> list[dict]:
        with (out / "summary.csv").open(newline="") as fh:
            return list(csv.DictReader(fh))

    got = summary()
    assert [(r["row"], r["case_id"], r["status"], r["Patient ID"]) for r in got] == [
        ("2", "cvc", "ok", "P1"), ("3", "gone", "invalid", "P2"), ("4", "kvasir", "not run", "P3"),
        ("5", "cvc2", "not run", "P4")]
    assert got[0]["notes"] == "first, with a comma" and "input not found" in got[1]["error"]
    log = (out / "batch.log").read_text()
    assert " START " in log and " OK case cvc: mask.png" in log and " FAILED row 3:" in log
    assert " INTERRUPTED 1 ok, 0 finished earlier, 0 failed, 1 invalid rows, 2 not run" in log

    report = run_batch(parsed, plan, engine=CountingEngine(engine))
    assert [(r["case_id"], r["status"]) for r in summary()] == [
        ("cvc", "skipped"), ("gone", "invalid"), ("kvasir", "ok"), ("cvc2", "ok")]
    assert report.failed == 1
    record = json.loads((out / "kvasir" / "case.json").read_text())
    assert record["manifest_columns"] == {"notes": "", "Patient ID": "P3"}
    # the extra columns do not decide the outputs: a changed note runs nothing again
    rows[2]["notes"] = "seen by a second reader"
    counting = CountingEngine(engine)
    run_batch(read_manifest(write_manifest(tmp_path / "m.csv", rows, header)), plan,
              engine=counting)
    assert counting.calls == 0
    assert summary()[2]["notes"] == "seen by a second reader"

    # a batch without any failure has its log too
    clean = tmp_path / "clean"
    run_batch(read_manifest(write_manifest(tmp_path / "one.csv", rows[:1], header)),
              plan_for(clean, tiny_checkpoint), engine=engine)
    log = (clean / "batch.log").read_text()
    assert " START " in log and " END 1 ok" in log and "FAILED" not in log


# -- click prompts in the manifest: same masks as the library with the same Prompt ------------
def test_rows_with_points_give_the_library_masks_and_bad_rows_do_not_stop(
        cases, engine, tiny_checkpoint, tmp_path):
    from polypsam import io
    from polypsam.engine import FramePrompt, Prompt
    from polypsam.overlay import labelmap_from_masks
    from polypsam.frames import read_frames
    from polypsam.propagation import propagate, track

    x0, y0, x1, y1 = (int(float(v)) for v in cases["kvasir"]["boxes"].split())
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    lx0, ly0, lx1, ly1 = (int(v) for v in cases["lesion"]["boxes"].split())
    lx, ly = (lx0 + lx1) // 2, (ly0 + ly1) // 2
    clip_box = [int(float(v)) for v in cases["clip"]["boxes"].split()]
    fx, fy = (clip_box[0] + clip_box[2]) // 2, (clip_box[1] + clip_box[3]) // 2
    two = tmp_path / "two-frames"  # prompted frame 1, a click on frame 0: one tracked frame
    two.mkdir()
    for name in ("030.png", "031.png"):
        shutil.copy(Path(cases["clip"]["input"]) / name, two / name)
    kvasir = {**cases["kvasir"], "reference": ""}
    rows = [
        {**kvasir, "case_id": "boxpts", "points": f"{cx} {cy}",
         "negative_points": f"{x0 + 3} {y0 + 3}"},
        {**kvasir, "case_id": "ptsonly", "boxes": "", "points": f"{cx} {cy}; {cx + 5},{cy}",
         "negative_points": f"{x0 + 3} {y0 + 3}"},
        {**cases["lesion"], "case_id": "ctpts", "boxes": "", "reference": "",
         "slices": "5 6", "points": f"{lx} {ly}", "slice_points": f"5 {lx} {ly}"},
        {**cases["clip"], "case_id": "clippts", "input": str(two), "reference": "",
         "frame_points": f"0 {fx} {fy}"},
        {**kvasir, "case_id": "twoboxes", "boxes": f"{x0} {y0} {cx} {cy}; {cx} {cy} {x1} {y1}",
         "points": f"{cx} {cy}"},
        {**kvasir, "case_id": "outside", "points": f"{cx} 5000"},
        {**kvasir, "case_id": "onlyneg", "boxes": "", "negative_points": f"{cx} {cy}"},
        {**kvasir, "case_id": "badpoint", "points": "1 2 3"},
        {**kvasir, "case_id": "sliceonimage", "slice_points": "0 5 5"},
        {**cases["lesion"], "case_id": "halfslice", "slice_points": "5.5 20 20"},
    ]
    path = write_manifest(tmp_path / "m.csv", rows, HEADER + POINT_COLUMNS)
    parsed = read_manifest(path)
    errors = {e.case_id: e.message for e in parsed.errors}
    assert "2 boxes with clicks" in errors["twoboxes"]
    assert "one row per object" in errors["twoboxes"]
    assert "exclude points alone" in errors["onlyneg"]
    assert "must be X Y" in errors["badpoint"]
    assert "slice_points applies to volumes" in errors["sliceonimage"]
    assert "slice/frame 5.5 must be an integer" in errors["halfslice"]
    assert len(errors) == 5
    ct = next(c for c in parsed.cases if c.case_id == "ctpts")
    assert ct.task == "propagate" and ct.other_points == ((5, lx, ly, 1),)

    out = tmp_path / "out"
    plan = plan_for(out, tiny_checkpoint)
    report = run_batch(parsed, plan, engine=engine)
    status = {r.case_id: r.status for r in report.results}
    assert status == {"boxpts": "ok", "ptsonly": "ok", "ctpts": "ok", "clippts": "ok",
                      "outside": "failed"}
    outside = next(r for r in report.results if r.case_id == "outside")
    assert "point (" in outside.error and "lies outside the image" in outside.error
    failures = {f["case_id"] for f in csv.DictReader((out / "failures.csv").open())}
    assert failures == {"outside", "twoboxes", "onlyneg", "badpoint", "sliceonimage", "halfslice"}

    image = io.read_image(cases["kvasir"]["input"])
    expected = {
        "boxpts": Prompt(box=(x0, y0, x1, y1), points=[(cx, cy), (x0 + 3, y0 + 3)], labels=[1, 0]),
        "ptsonly": Prompt(points=[(cx, cy), (cx + 5, cy), (x0 + 3, y0 + 3)], labels=[1, 1, 0]),
    }
    for name, prompt in expected.items():
        want = labelmap_from_masks(engine.segment_2d(image, [prompt]))
        np.testing.assert_array_equal(read_labels(out / name / "mask.png"), want)
    record = json.loads((out / "boxpts" / "case.json").read_text())
    assert record["prompts"] == {"boxes": [[x0, y0, x1, y1]], "points": [[cx, cy]],
                                 "negative_points": [[x0 + 3, y0 + 3]]}
    assert record["provenance"]["prompts"] == record["prompts"]

    volume = io.read_volume(cases["lesion"]["input"])
    want = propagate(engine, volume, [Prompt(points=[(lx, ly)], labels=[1])], (5, 6), 6,
                     refinements=[FramePrompt(5, 1, points=[(lx, ly)], labels=[1])])
    got = io.read_volume(out / "ctpts" / "labelmap.nii.gz").array
    np.testing.assert_array_equal(got, want.labelmap.array)
    record = json.loads((out / "ctpts" / "case.json").read_text())
    assert record["prompts"] == {"boxes": [], "points": [[lx, ly]], "slice_points": [[5, lx, ly]],
                                 "slices": [5, 6], "key_slice": 6}

    # a sequence row with a click on another frame (a conditioning frame of the tracker)
    want = track(engine, read_frames(two), 1, [Prompt(box=clip_box)],
                 refinements=[FramePrompt(0, 1, points=[(fx, fy)], labels=[1])])
    np.testing.assert_array_equal(read_labels(out / "clippts" / "masks"), want.labels)
    record = json.loads((out / "clippts" / "case.json").read_text())
    assert record["prompts"]["frame_points"] == [[0, fx, fy]] and record["frame"] == 1

    # points are part of the fingerprint: only the row whose points changed runs again
    rows[0] = {**rows[0], "points": f"{cx} {cy + 4}"}
    counting = CountingEngine(engine)
    report = run_batch(read_manifest(write_manifest(path, rows, HEADER + POINT_COLUMNS)), plan,
                       engine=counting)
    status = {r.case_id: r.status for r in report.results}
    assert status == {"boxpts": "ok", "ptsonly": "skipped", "ctpts": "skipped",
                      "clippts": "skipped", "outside": "failed"}
    assert counting.calls == 1
    record = json.loads((out / "boxpts" / "case.json").read_text())
    assert record["prompts"]["points"] == [[cx, cy + 4]]


# -- CLI: in this process and through real Dask clusters on loopback --------------------------
@pytest.fixture(scope="module")
def reference_run(cases, engine, tiny_checkpoint, tmp_path_factory) -> Path:
    """The polyp frames and the CT lesion run in this process, one after the other."""
    tmp = tmp_path_factory.mktemp("reference")
    rows = [cases["kvasir"], cases["cvc"], cases["lesion"]]
    parsed = read_manifest(write_manifest(tmp / "m.csv", rows))
    report = run_batch(parsed, plan_for(tmp / "out", tiny_checkpoint, THREADS), engine=engine)
    assert report.count("ok") == 3
    return tmp / "out"


OUTPUTS = {"kvasir": "mask.png", "cvc": "mask.png", "lesion": "labelmap.nii.gz"}


def test_volume_case_keeps_the_input_grid_and_records_provenance(cases, reference_run, engine):
    import SimpleITK as sitk

    seg = sitk.ReadImage(str(reference_run / "lesion" / "labelmap.nii.gz"))
    ref = sitk.ReadImage(cases["lesion"]["input"])
    assert seg.GetSize() == ref.GetSize()
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-6)
    labels = sitk.GetArrayFromImage(seg)
    assert not labels[:5].any() and not labels[8:].any()  # only slices 5..7 are written

    record = json.loads((reference_run / "lesion" / "case.json").read_text())
    assert record["status"] == "ok" and record["task"] == "propagate"
    assert engine.info.provenance().items() <= record["provenance"].items()
    assert record["provenance"]["checkpoint_sha256"]
    assert record["provenance"]["prompts"] == record["prompts"]
    assert record["prompts"]["slices"] == [5, 7] and record["prompts"]["key_slice"] == 6
    assert record["slices_written"] == [5, 7] and set(record["scores"]) == {"1"}
    assert {"read_s", "compute_s", "write_s", "total_s"} <= set(record["timings"])
    assert record["reference"] == str(Path(cases["lesion"]["reference"]).resolve())


def test_a_case_exports_with_its_provenance(reference_run, tmp_path, capsys):
    out = tmp_path / "lesion.nii.gz"
    case = reference_run / "lesion"
    assert cli.main(["export", str(case / "labelmap.nii.gz"), "--to", "nifti", "-o", str(out),
                     "--provenance", str(case / "case.json")]) == 0
    sidecar = json.loads(Path(capsys.readouterr().out.split(" and ")[-1].strip()).read_text())
    record = json.loads((case / "case.json").read_text())
    prov = sidecar["provenance"]
    assert prov["checkpoint_sha256"] == record["provenance"]["checkpoint_sha256"]
    assert prov["prompts"] == {"boxes": record["prompts"]["boxes"], "key_slice": 6,
                               "slices": [5, 7]}
    assert prov["source"] == record["input"]
    # without --provenance, export finds the case's case.json itself
    again = tmp_path / "again.nii.gz"
    assert cli.main(["export", str(case / "labelmap.nii.gz"), "--to", "nifti", "-o",
                     str(again)]) == 0
    found = json.loads(again.with_name(again.name + ".provenance.json").read_text())
    assert found["provenance"]["checkpoint_sha256"] == record["provenance"]["checkpoint_sha256"]
    assert found["provenance"]["prompts"] == prov["prompts"]


def test_cli_batch_in_process_builds_the_engine_once(cases, reference_run, tiny_checkpoint,
                                                     tmp_path, capsys):
    rows = [cases["cvc"], {**cases["cvc"], "case_id": "outside", "boxes": "40 155 463 279"},
            {**cases["cvc"], "case_id": "cvc-again"}]
    out = tmp_path / "out"
    assert cli.main(["batch", str(write_manifest(tmp_path / "m.csv", rows)), "-o", str(out),
                     *engine_args(tiny_checkpoint)]) == 1  # 1: a case failed, the rest ran
    printed = capsys.readouterr()
    assert "2 cases done, 0 already finished, 1 failed" in printed.out
    assert "case outside failed: box (40, 155, 463, 279) lies outside" in printed.err
    records = [json.loads((out / n / "case.json").read_text()) for n in ("cvc", "cvc-again")]
    assert [r["engine_loaded"] for r in records] == [True, False]
    for name in ("cvc", "cvc-again"):
        np.testing.assert_array_equal(read_labels(out / name / "mask.png"),
                                      read_labels(reference_run / "cvc" / "mask.png"))


def test_cli_batch_on_a_local_dask_cluster_gives_identical_outputs(cases, reference_run,
                                                                   tiny_checkpoint, tmp_path,
                                                                   capsys):
    import os

    rows = [cases["kvasir"], cases["cvc"], cases["lesion"]]
    manifest_csv = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "dask"
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    assert cli.main(["batch", str(manifest_csv), "-o", str(out), "--workers", "2",
                     *engine_args(tiny_checkpoint)]) == 0
    assert "3 cases done, 0 already finished, 0 failed" in capsys.readouterr().out
    # distributed sets OMP_NUM_THREADS=1 in the caller for its workers: the batch restores it
    assert {k: os.environ.get(k) for k in threads} == threads
    for name, output in OUTPUTS.items():
        np.testing.assert_array_equal(read_labels(out / name / output),
                                      read_labels(reference_run / name / output))
    records = [json.loads((out / n / "case.json").read_text()) for n in OUTPUTS]
    assert all(r["pid"] != os.getpid() for r in records)  # ran in the workers
    # with the thread count the in-process run used (recorded in case.json and provenance)
    reference = [json.loads((reference_run / n / "case.json").read_text()) for n in OUTPUTS]
    assert {r["torch_threads"] for r in records + reference} == {THREADS}
    assert {r["provenance"]["torch_threads"] for r in records} == {THREADS}
    assert f"on 2 worker processes, {THREADS} torch threads per model call" in \
        (out / "batch.log").read_text()
    loads: dict[int, int] = {}
    for r in records:
        loads[r["pid"]] = loads.get(r["pid"], 0) + int(r["engine_loaded"])
    assert all(n == 1 for n in loads.values())  # each worker built its engine once

    # resumed: finished cases are skipped before anything is submitted (no cluster starts)
    assert cli.main(["batch", str(manifest_csv), "-o", str(out), "--workers", "2",
                     *engine_args(tiny_checkpoint)]) == 0
    assert "0 cases done, 3 already finished, 0 failed" in capsys.readouterr().out
    assert [json.loads((out / n / "case.json").read_text()) for n in OUTPUTS] == records


def test_cli_batch_on_an_existing_dask_scheduler(cases, reference_run, tiny_checkpoint, tmp_path,
                                                 capsys):
    from dask.distributed import LocalCluster

    from polypsam.batch.schedule import _own_thread_settings

    manifest_csv = write_manifest(tmp_path / "m.csv", [cases["kvasir"], cases["cvc"]])
    out = tmp_path / "remote"
    with _own_thread_settings(), LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert cli.main(["batch", str(manifest_csv), "-o", str(out), "--scheduler",
                         cluster.scheduler_address, *engine_args(tiny_checkpoint)]) == 0
    assert "2 cases done" in capsys.readouterr().out
    records = [json.loads((out / n / "case.json").read_text()) for n in ("kvasir", "cvc")]
    assert sorted(r["engine_loaded"] for r in records) == [False, True]  # one worker, one load
    for name in ("kvasir", "cvc"):
        np.testing.assert_array_equal(read_labels(out / name / "mask.png"),
                                      read_labels(reference_run / name / "mask.png"))


def test_cli_batch_evaluate_writes_metrics_table_and_plot(cases, reference_run, tiny_checkpoint,
                                                         tmp_path, capsys):
    pytest.importorskip("polypsam.evaluation")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)  # finished cases: resumed, then evaluated
    manifest_csv = write_manifest(tmp_path / "m.csv", [cases["kvasir"], cases["cvc"],
                                                       cases["lesion"]])
    assert cli.main(["batch", str(manifest_csv), "-o", str(out), "--evaluate",
                     "--tolerance-mm", "3", "--tolerance-px", "4",
                     *engine_args(tiny_checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "0 cases done, 3 already finished" in printed and "dice" in printed
    # frames (pixels) and the CT volume (mm) are summarised apart, each with its unit
    assert "volumes (3-D): distances in millimetres (mm), NSD tolerance 3 mm" in printed
    assert "distances in pixels (px), NSD tolerance 4 px" in printed
    with (out / "metrics.csv").open() as fh:
        rows = {(r["case"], r["label"]): r for r in csv.DictReader(fh)}
    assert set(rows) == {("kvasir", "1"), ("cvc", "1"), ("lesion", "1")}
    units = {case: (r["distance_unit"], r["kind"], float(r["nsd_tolerance"]))
             for (case, _), r in rows.items()}
    assert units == {"kvasir": ("px", "image", 4.0), "cvc": ("px", "image", 4.0),
                     "lesion": ("mm", "volume", 3.0)}
    import SimpleITK as sitk

    pred = read_labels(out / "lesion" / "labelmap.nii.gz") == 1
    ref = sitk.GetArrayFromImage(sitk.ReadImage(cases["lesion"]["reference"])) == 1
    dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert float(rows[("lesion", "1")]["dice"]) == pytest.approx(dice, abs=1e-5)
    assert int(rows[("lesion", "1")]["ref_voxels"]) == ref.sum()
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_batch_bad_options(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("input,boxes\n")
    assert cli.main(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "o")]) == 2
    assert "has no rows" in capsys.readouterr().err
    assert cli.main(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "o"),
                     "--workers", "-1"]) == 2
    assert "--workers must be 0 or more" in capsys.readouterr().err
