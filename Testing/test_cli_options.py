"""One name per concept across the commands, older spellings kept as aliases, defaults in --help."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG
from polypsam import cli
from polypsam.cli import build_parser
from polypsam.cli import options as cli_options

CT = "ct/totalsegmentator/example_ct_sm.nii.gz"
MODEL_COMMANDS = ("segment", "propagate", "track", "batch", "finetune", "serve")


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_default_is_shown_in_help():
    missing = []
    for name, parser in subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            default = action.default
            if (not action.option_strings or default is None or default is False
                    or default == argparse.SUPPRESS or default == []
                    or isinstance(action, (argparse._HelpAction, argparse._StoreFalseAction))):
                continue
            text = formatter._expand_help(action)
            if f"default: {default}" not in text:
                missing.append(f"{name} {action.option_strings[0]} ({default!r}): {text}")
    assert not missing, "\n".join(missing)
    limits = subparsers()["serve"].format_help()
    for flag, value in (("--max-sessions", 16), ("--idle-timeout", 3600.0), ("--max-jobs", 4),
                        ("--memory-mb", 4096), ("--max-upload-mb", 256)):
        assert flag in limits and f"(default: {value})" in limits
    finetune = subparsers()["finetune"].format_help()
    for value in ("(default: 10)", "(default: 1e-05)", "(default: 0)"):  # patience, min-lr, seed
        assert value in finetune


def test_one_name_per_concept():
    parsers = subparsers()
    for name in MODEL_COMMANDS:
        assert "--checkpoint" in options_of(parsers[name]), name
    for name in ("segment", "propagate"):
        assert "--key-slice" in options_of(parsers[name])
    for name in ("segment", "propagate", "track", "batch"):
        assert "--overlay" in options_of(parsers[name]), name
    for name, parser in parsers.items():  # I is the column axis, never a frame
        for action in parser._actions:
            metavar = action.metavar if isinstance(action.metavar, tuple) else (action.metavar,)
            assert "I" not in metavar, (name, action.option_strings)
    usage = parsers["track"].format_help()
    assert "--frame FRAME" in usage and "--frame-point FRAME X Y" in usage
    assert "column/I" not in parsers["segment"].format_help()
    assert set(cli.batch.LABELMAP_SUFFIXES) <= set(cli.export.FORMAT_CHOICES)  # as export --to


@pytest.mark.parametrize("old,new", [
    (["segment", "x.nii.gz", "-o", "y.nrrd", "--slice", "7"],
     ["segment", "x.nii.gz", "-o", "y.nrrd", "--key-slice", "7"]),
    (["finetune", "data", "-o", "ft.pt", "--base", "sam2.1_hiera_small"],
     ["finetune", "data", "-o", "ft.pt", "--checkpoint", "sam2.1_hiera_small"]),
    (["batch", "m.csv", "-o", "out", "--labelmap-format", "nii.gz"],
     ["batch", "m.csv", "-o", "out", "--labelmap-format", "nifti"]),
])
def test_older_spellings_mean_the_same(old, new):
    parser = build_parser()
    a, b = vars(parser.parse_args(old)), vars(parser.parse_args(new))
    assert a == b
    assert {"segment": a.get("slice_k"), "finetune": a.get("base"),
            "batch": a.get("labelmap_format")}[old[0]] in (7, "sam2.1_hiera_small", "nifti")


def test_overlay_alone_or_with_a_path(tmp_path):
    parser = build_parser()
    out = tmp_path / "lesion.nii.gz"
    for command, beside in ((["segment", "f.png", "-o", str(tmp_path / "m.png")],
                             tmp_path / "m_overlay.png"),
                            (["propagate", "ct.nrrd", "--slices", "1", "2", "-o", str(out)],
                             tmp_path / "lesion_overlay"),
                            (["track", "frames", "--frame", "0", "-o", str(tmp_path / "masks")],
                             tmp_path / "masks" / "overlay")):
        args = parser.parse_args(command)
        assert cli_options.overlay_path(args, beside) is None
        args = parser.parse_args(command + ["--overlay"])
        assert cli_options.overlay_path(args, beside) == beside
        args = parser.parse_args(command + ["--overlay", str(tmp_path / "mine")])
        assert cli_options.overlay_path(args, beside) == tmp_path / "mine"
    assert cli_options.sibling(out, "_overlay") == tmp_path / "lesion_overlay"
    assert parser.parse_args(["batch", "m.csv", "-o", "o", "--overlay"]).overlay is True


def test_segment_old_and_new_slice_spelling_write_the_same(shared_data, engine, monkeypatch,
                                                           tmp_path):
    import SimpleITK as sitk

    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    written = []
    for flag in ("--slice", "--key-slice"):
        out = tmp_path / f"{flag.strip('-')}.nrrd"
        assert cli.main(["segment", str(shared_data / CT), flag, "12", "--box", "20", "15", "90",
                         "70", "--window", "abdomen", "-o", str(out), "--overlay"]) == 0
        written.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
        assert (tmp_path / f"{flag.strip('-')}_overlay.png").is_file()
    assert np.array_equal(*written) and written[0][12].any()


def test_propagate_overlay_one_picture_per_slice(shared_data, engine, monkeypatch, tmp_path):
    from polypsam import io

    monkeypatch.setattr(cli_options, "engine_from_args", lambda args: engine)
    out = tmp_path / "lesion.nii.gz"
    assert cli.main(["propagate", str(shared_data / CT), "--box", "30", "30", "70", "60",
                     "--slices", "13", "15", "--point", "50", "45", "--slice-point", "15", "48", "44",
                     "-o", str(out), "--overlay"]) == 0
    folder = tmp_path / "lesion_overlay"
    assert sorted(p.name for p in folder.iterdir()) == [
        "provenance.json", "slice_0013.png", "slice_0014.png", "slice_0015.png"]
    key = io.read_image(folder / "slice_0014.png")
    assert key.shape[1] == 366  # 122 x 101 slices, enlarged 3 times


def test_batch_labelmap_format_alias_and_overlays(shared_data, tiny_checkpoint, tmp_path):
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case_id", "input", "task", "boxes", "slices", "key_slice"])
        writer.writerow(["ct", str(shared_data / CT), "propagate", "30 30 70 60", "13 14", "13"])
        writer.writerow(["frame", str(shared_data / "polyp/cvc_clinicdb/images/100.png"), "",
                         "40 40 200 200", "", ""])
    model = ["--checkpoint", str(tiny_checkpoint), "--config", TINY_CONFIG, "--device", "cpu",
             "--image-size", str(TEST_IMAGE_SIZE)]
    out = tmp_path / "out"
    assert cli.main(["batch", str(manifest), "-o", str(out), "--labelmap-format", "nii.gz",
                     "--overlay", *model]) == 0
    assert (out / "ct" / "labelmap.nii.gz").is_file()
    assert sorted(p.name for p in (out / "ct" / "overlay").iterdir()) == [
        "slice_0013.png", "slice_0014.png"]
    assert (out / "frame" / "overlay.png").is_file()
    assert cli.main(["batch", str(manifest), "-o", str(tmp_path / "nrrd"), "--labelmap-format",
                     "nrrd", *model]) == 0
    assert (tmp_path / "nrrd" / "ct" / "labelmap.nrrd").is_file()
    assert not (tmp_path / "nrrd" / "ct" / "overlay").exists()
