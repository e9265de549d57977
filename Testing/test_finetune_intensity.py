"""The intensity a checkpoint was fine-tuned with is recorded in its sidecar and applied by every
inference path (library engine, CLI, batch, server, the engine factory Slicer uses) unless told
otherwise. Real SAM2 tiny (random base weights, one epoch) on TotalSegmentator's CT in HU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TEST_IMAGE_SIZE, TINY_CONFIG

CT = "ct/totalsegmentator/example_ct_sm.nii.gz"
SEG = "ct/totalsegmentator/example_seg.nii.gz"
K = 15  # a slice with the spleen (label 1)


@pytest.fixture(scope="module")
def ct_checkpoint(shared_data, tiny_checkpoint, tmp_path_factory) -> Path:
    """One epoch of ``polypsam finetune`` on 8 CT slices with the spleen (default window)."""
    from polypsam.cli import main

    root = tmp_path_factory.mktemp("ct-finetune")
    for sub, src in (("images", CT), ("masks", SEG)):
        (root / "data" / sub).mkdir(parents=True)
        image = sitk.ReadImage(str(shared_data / src))[:, :, 12:20]  # keeps the geometry
        sitk.WriteImage(image, str(root / "data" / sub / "abdomen.nii.gz"))
    out = root / "ct.pt"
    assert main(["finetune", str(root / "data"), "-o", str(out), "--base", str(tiny_checkpoint),
                 "--config", TINY_CONFIG, "--image-size", str(TEST_IMAGE_SIZE), "--epochs", "1",
                 "--label", "1", "--device", "cpu", "--cache-dir", str(root / "features")]) == 0
    return out


@pytest.fixture(scope="module")
def ct_engine(ct_checkpoint):
    from polypsam.engines import engine_for

    engine = engine_for(ct_checkpoint, device="cpu")  # config, size, intensity: its sidecar
    yield engine
    engine.close()


def spleen_box(shared_data) -> list[int]:
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / SEG)))[K] == 1
    ys, xs = np.nonzero(seg)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_sidecar_records_the_training_intensity(ct_checkpoint):
    sidecar = json.loads(Path(str(ct_checkpoint) + ".json").read_text())
    assert sidecar["intensity"]["mapping"] == "40,400"  # abdomen, the default for volumes
    assert sidecar["intensity"]["given_as"] == "default"
    assert sidecar["data"]["window"] == "40,400"
    assert [f["image"] for f in sidecar["data"]["train_files"]] == ["images/abdomen.nii.gz"]
    assert sidecar["data"]["split"]["seed"] == 0


def test_engine_applies_it_unless_a_call_gives_another(ct_engine, shared_data):
    from polypsam.engines import EngineCache, EngineSettings
    from polypsam.io import read_volume
    from polypsam.preprocess import CT_WINDOWS, Percentile

    assert ct_engine.info.trained_intensity == "40,400"
    assert ct_engine.info.provenance()["trained_intensity"] == "40,400"
    image = read_volume(shared_data / CT).array[K]
    box = spleen_box(shared_data)
    default, = ct_engine.segment_2d(image, [box])
    abdomen, = ct_engine.segment_2d(image, [box], intensity=CT_WINDOWS["abdomen"])
    percentile, = ct_engine.segment_2d(image, [box], intensity=Percentile())
    assert default.score == abdomen.score and np.array_equal(default.mask, abdomen.mask)
    assert percentile.score != abdomen.score  # the mapping matters: another input to the model
    # background encoding (prefetch) maps the image the same way: the box then reuses it
    other = read_volume(shared_data / CT).array[K + 1]
    assert ct_engine.encode(other)
    runs = ct_engine.encoder_runs
    ct_engine.segment_2d(other, [box])
    assert ct_engine.encoder_runs == runs

    # Slicer builds engines through the same factory (EngineCache): it gets the same info
    cache = EngineCache()
    try:
        engine = cache.get(EngineSettings(checkpoint=str(ct_engine.info.checkpoint),
                                          device="cpu"))
        assert engine.info.trained_intensity == "40,400"
    finally:
        cache.close()


def test_cli_segment_and_propagate_apply_it_and_say_so(ct_checkpoint, ct_engine, shared_data,
                                                       tmp_path, capsys):
    from polypsam import cli, io
    from polypsam.engine import Prompt
    from polypsam.preprocess import CT_WINDOWS
    from polypsam.propagation import propagate

    box = spleen_box(shared_data)
    model = ["--checkpoint", str(ct_checkpoint), "--device", "cpu"]
    out = tmp_path / "slice.nrrd"
    assert cli.main(["segment", str(shared_data / CT), "--slice", str(K), "--box",
                     *map(str, box), "-o", str(out), *model]) == 0
    err = capsys.readouterr().err
    assert "intensity: window level 40 width 400 (abdomen), as" in err and "fine-tuned" in err
    volume = io.read_volume(shared_data / CT)
    want, = ct_engine.segment_2d(volume.array[K], [box], intensity=CT_WINDOWS["abdomen"])
    assert np.array_equal(io.read_volume(out).array[K] == 1, want.mask)
    prov = json.loads(Path(str(out) + ".provenance.json").read_text())["provenance"]
    assert prov["intensity"]["mapping"] == "40,400"
    assert prov["intensity"]["source"].startswith("the checkpoint's fine-tuning intensity")

    assert cli.main(["segment", str(shared_data / CT), "--slice", str(K), "--box",
                     *map(str, box), "-o", str(tmp_path / "lung.nrrd"), "--window", "lung",
                     *model]) == 0
    err = capsys.readouterr().err
    assert "note: --window gives window level -600 width 1500 (lung), but" in err
    lung = json.loads((tmp_path / "lung.nrrd.provenance.json").read_text())["provenance"]
    assert lung["intensity"] == {"mapping": "-600,1500", "source": "--window",
                                 "description": "window level -600 width 1500 (lung)"}

    labelmap = tmp_path / "spleen.nrrd"
    assert cli.main(["propagate", str(shared_data / CT), "--box", *map(str, box), "--slices",
                     str(K - 1), str(K + 1), "--key-slice", str(K), "-o", str(labelmap),
                     *model]) == 0
    explicit = propagate(ct_engine, volume, [Prompt(box=box)], (K - 1, K + 1), K,
                         intensity=CT_WINDOWS["abdomen"])
    assert np.array_equal(io.read_volume(labelmap).array, explicit.labelmap.array)


def test_batch_applies_it_to_rows_without_a_window(ct_checkpoint, ct_engine, shared_data,
                                                   tmp_path, capsys):
    from polypsam import cli, io
    from polypsam.engine import Prompt
    from polypsam.preprocess import CT_WINDOWS
    from polypsam.propagation import propagate

    box = spleen_box(shared_data)
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,input,boxes,slices,key_slice,window\n"
                        f"plain,{shared_data / CT},{' '.join(map(str, box))},{K - 1} {K + 1},{K},\n"
                        f"lung,{shared_data / CT},{' '.join(map(str, box))},{K - 1} {K + 1},{K},"
                        "lung\n")
    out = tmp_path / "out"
    assert cli.main(["batch", str(manifest), "-o", str(out), "--checkpoint", str(ct_checkpoint),
                     "--device", "cpu"]) == 0
    assert "rows without a window: window level 40 width 400" in capsys.readouterr().err
    volume = io.read_volume(shared_data / CT)
    for case, window in (("plain", "abdomen"), ("lung", "lung")):
        want = propagate(ct_engine, volume, [Prompt(box=box)], (K - 1, K + 1), K,
                         intensity=CT_WINDOWS[window])
        got = io.read_volume(out / case / "labelmap.nii.gz").array
        assert np.array_equal(got, want.labelmap.array), case
    record = json.loads((out / "plain" / "case.json").read_text())
    assert record["intensity"]["mapping"] == "40,400"
    assert record["provenance"]["trained_intensity"] == "40,400"
    lung = json.loads((out / "lung" / "case.json").read_text())["intensity"]
    assert lung["mapping"] == "-600,1500" and lung["source"] == "the row's window"


def test_server_applies_it_and_its_clients_know(ct_checkpoint, ct_engine, shared_data, tmp_path):
    from server_fixtures import ServerProcess

    from polypsam.engine import Prompt
    from polypsam.io import read_volume
    from polypsam.preprocess import CT_WINDOWS
    from polypsam.propagation import propagate
    from polypsam.server.client import ServerEngine

    box = spleen_box(shared_data)
    volume = read_volume(shared_data / CT)
    server = ServerProcess(ct_checkpoint, log=tmp_path / "server.log")
    try:
        remote = ServerEngine(server.url)
        try:
            assert remote.info.trained_intensity == "40,400"
            got, = remote.segment_2d(volume.array[K], [box])  # no intensity sent
            want, = ct_engine.segment_2d(volume.array[K], [box], intensity=CT_WINDOWS["abdomen"])
            assert np.array_equal(got.mask, want.mask)
            assert got.score == pytest.approx(want.score, abs=1e-6)
            tracked = propagate(remote, volume, [Prompt(box=box)], (K - 1, K + 1), K)
            local = propagate(ct_engine, volume, [Prompt(box=box)], (K - 1, K + 1), K,
                              intensity=CT_WINDOWS["abdomen"])
            assert np.array_equal(tracked.labelmap.array, local.labelmap.array)
        finally:
            remote.close()
    finally:
        server.stop()
