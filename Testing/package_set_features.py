"""Run the PolypSAM module's features in a Python holding only one Slicer's packages.

Started by ``Testing/test_slicer_package_set.py`` as ``python -S`` with a ``PYTHONPATH`` of a
site-packages holding only that Slicer's bundled distributions (the second run adds what the
module's consented installer installs), the library and ``Testing/`` (see
``Testing/package_sets.py``). Each feature runs through the library functions that
``PolypSAM.py``'s logic calls, on slicer-core MRML, and is recorded as

* ``works: ...`` — it ran and wrote what it should (checked by reading the result back);
* ``offered: <pinned requirements>`` — the module offers them with consent, and until they are
  installed the feature refuses with a message naming them;
* ``hidden: <reason>`` — the module offers nothing and says why in one line;
* ``error: ...`` — anything else: a package needed silently shows up here.

The last line of stdout is one JSON object ``{feature: result}`` (plus ``_importable`` and
``_versions``: what this Python can import, and the versions its metadata reports).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import traceback
import types
from pathlib import Path

PROBED = ("torch", "sam2", "hydra", "PIL", "numpy", "SimpleITK", "pydicom", "highdicom",
          "slicerio", "imageio", "av", "pycocotools", "cv2", "fastapi", "zstandard", "pytest")
TINY_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def load_slicer_fixtures() -> types.ModuleType:
    """``Testing/slicer_fixtures.py`` imports pytest (for its fixtures), which no Slicer has: a
    stand-in is in ``sys.modules`` only while that file is imported, never while PolypSAM runs."""
    stand_in = types.ModuleType("pytest")
    stand_in.fixture = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    sys.modules["pytest"] = stand_in
    try:
        import slicer_fixtures
    finally:
        del sys.modules["pytest"]
    return slicer_fixtures


class Features:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fx = load_slicer_fixtures()
        self.core = self.fx.init_slicer_core()
        self.scene = self.core.scene
        self.tmp = Path(tempfile.mkdtemp(prefix="polypsam-pkgset-"))
        self.results: dict[str, object] = {}

    def record(self, name: str, run) -> None:
        self.scene.Clear(0)
        try:
            self.results[name] = run()
        except Exception as exc:  # recorded, so one failure does not hide the others
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self.results[name] = (f"error: {type(exc).__name__}: {exc}"
                                  f" (at {Path(where.filename).name}:{where.lineno})")

    # -- scenes -----------------------------------------------------------------------------
    def rgb_frame(self):
        import numpy as np

        rgb = np.full((64, 80, 3), 60, np.uint8)
        rgb[20:44, 25:55] = (200, 120, 110)
        node = self.fx.add_volume(self.scene, rgb[None], name="frame",
                                  class_name="vtkMRMLVectorVolumeNode")
        return node, self.fx.add_roi_on_ijk(self.scene, node, (40, 32, 0), (34, 28, 1), "Polyp")

    def ct(self):
        import numpy as np

        array = np.full((8, 40, 48), -100, np.int16)
        array[2:6, 12:28, 14:34] = 60
        node = self.fx.add_volume(self.scene, array, self.fx.ijk_to_ras_matrix((0.8, 0.8, 2.5)), "ct")
        return node, self.fx.add_roi_on_ijk(self.scene, node, (24, 20, 4), (22, 18, 3), "Lesion")

    def rgb_video(self):
        import numpy as np

        frames = []
        for t in range(3):
            rgb = np.full((48, 64, 3), 50, np.uint8)
            rgb[14:34, 16 + 3 * t:40 + 3 * t] = (210, 130, 120)
            frames.append(rgb)
        browser = self.fx.add_rgb_video(self.scene, frames)
        self.core.logics["sequences"].UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(browser.GetMasterSequenceNode())
        return browser, self.fx.add_roi_on_ijk(self.scene, proxy, (30, 24, 0), (28, 24, 1), "Polyp")

    # -- features ---------------------------------------------------------------------------
    def module_imports(self) -> str:
        names = ["polypsam.engines", "polypsam.mrml", "polypsam.mrml.dependencies",
                 "polypsam.mrml.operations", "polypsam.mrml.scene", "polypsam.mrml.exporting",
                 "polypsam.mrml.video_files", "polypsam.mrml.clicks", "polypsam.mrml.interactive",
                 "polypsam.mrml.video_clicks", "polypsam.mrml.session", "polypsam.mrml.scenarios",
                 "polypsam.server.client", "polypsam.export", "polypsam.background",
                 "polypsam.checkpoints"]
        for name in names:
            importlib.import_module(name)
        return f"works: {len(names)} modules"

    def first_use_check(self) -> str:
        from polypsam.mrml import dependencies as deps

        asked = []

        def no_pip(requirements):
            raise AssertionError(f"pip was called: {requirements}")

        status = deps.ensure_dependencies(confirm=lambda text: asked.append(text) or False,
                                          pip_install=no_pip)
        if status.ready:
            assert not asked, "asked although everything is installed"
            return "works: torch and sam2 are installed"
        assert status.declined and len(asked) == 1, status
        wanted = sorted(r for reqs in deps.missing_requirements().values() for r in reqs)
        assert all(r in asked[0] for r in wanted), asked[0]
        return "offered: " + " ".join(wanted)

    def installer_calls(self) -> dict:
        """The pip calls the module's installers make here, pip itself replaced by a recorder:
        each call's requirements and the constraints file it carried."""
        import shlex

        from polypsam.mrml import dependencies as deps

        calls = []

        def record(requirements):
            args = shlex.split(requirements)
            constraints = args[args.index("-c") + 1] if "-c" in args else None
            calls.append({"requirements": requirements.split(" -c ")[0],
                          "constraints": Path(constraints).read_text() if constraints else None})

        install = deps.protecting_installed(record)
        deps.ensure_dependencies(confirm=lambda text: True, pip_install=install, torch_installer=None)
        for feature in deps.OPTIONAL_PACKAGES:
            if deps.optional_support(feature).status == "install":
                deps.ensure_optional(feature, confirm=lambda text: True, pip_install=install)
        return {"calls": calls}

    def test_connection(self) -> str:
        from polypsam.server.client import test_connection

        return "works: " + test_connection(self.args.server)

    def run_operation(self, engine, operation: str) -> str:
        from polypsam import mrml

        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
        if operation == "track":
            browser, roi = self.rgb_video()
            request = mrml.Request(operation, browser_node=browser, rois=[roi], segmentation_node=seg)
        else:
            node, roi = self.rgb_frame() if operation == "segment" else self.ct()
            request = mrml.Request(operation, input_node=node, rois=[roi], segmentation_node=seg)
        result = mrml.run(request, engine)
        name = roi.GetName()
        assert name in result.segment_ids, result
        if operation == "track":
            stored = browser.GetSequenceNode(seg)
            assert stored is not None and stored.GetNumberOfDataNodes() == 3
            return "works: 3 frames tracked into a segmentation sequence"
        tags = mrml.read_provenance(seg, name)
        assert tags["operation"] == operation, tags
        out = self.tmp / f"{operation}-{engine.info.engine}.seg.nrrd"
        from polypsam.mrml import exporting

        exporting.export_segmentation(seg, node, out, "seg.nrrd")
        return f"works: segment '{name}' written, exported as {out.name}"

    def server_engine(self, operation: str):
        from polypsam import engines

        engine = engines.create_engine(engines.EngineSettings(kind="server", server_url=self.args.server))
        return lambda: self.run_operation(engine, operation)

    def in_process(self, operation: str):
        def run():
            from polypsam import engines
            from polypsam.mrml import dependencies as deps

            missing = sorted(r for reqs in deps.missing_requirements().values() for r in reqs)
            if missing:  # the button's first step is the first-use check: offered there
                return "offered: " + " ".join(missing)
            if not hasattr(self, "_engine"):
                self._engine = engines.create_engine(engines.EngineSettings(
                    checkpoint=self.args.checkpoint, config=TINY_CONFIG, device="cpu", image_size=256))
            return self.run_operation(self._engine, operation)
        return run

    def export(self, fmt: str):
        def run():
            import numpy as np

            from polypsam import io, mrml
            from polypsam.errors import InvalidInputError
            from polypsam.mrml import exporting

            if fmt == "dicom-seg":
                series = Path(self.args.dicom) if self.args.dicom else None
                if series is None or not series.is_dir():
                    return "skipped: no DICOM series given"
                ct = io.read_volume(series)
                volume = self.fx.add_volume(self.scene, ct.array, ct.geometry.ijk_to_ras(), "ct")
            else:
                series = None
                volume, _ = self.ct()
            seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "out")
            shape = tuple(volume.GetImageData().GetDimensions())[::-1]
            for n, name in enumerate(("Lesion", "Polyp"), start=1):
                mask = np.zeros(shape, bool)
                mask[n: n + 3, 10 * n: 10 * n + 8, 12: 20 + 4 * n] = True
                mrml.write_mask_to_segment(seg, name, mask, volume, provenance={"operation": "test"})
            labels = mrml.export_segment_labelmap(seg, volume)
            support = exporting.format_support(fmt)
            target = self.tmp / ("png" if fmt == "png" else f"export{exporting_suffix(fmt)}")
            kwargs = {"reference_dicom": series} if series is not None else {}
            if support.status != "ready":
                count = self.scene.GetNumberOfNodes()
                try:
                    exporting.export_segmentation(seg, volume, target, fmt, **kwargs)
                except InvalidInputError as exc:
                    message = str(exc)
                else:
                    raise AssertionError(f"{fmt} exported though its support is {support}")
                assert self.scene.GetNumberOfNodes() == count and not target.exists()
                if support.status == "install":
                    assert all(r in message for r in support.requirements), message
                    return "offered: " + " ".join(support.requirements)
                assert support.reason in message, message
                return "hidden: " + support.reason
            result = exporting.export_segmentation(seg, volume, target, fmt, **kwargs)
            check_export(fmt, result, labels, self.core)
            return f"works: {Path(result.path).name}"
        return run

    def load_video(self, which: str):
        def run():
            from polypsam.errors import InvalidInputError
            from polypsam.mrml import video_files

            if which == "folder":
                import numpy as np
                from PIL import Image

                folder = self.tmp / "frames"
                folder.mkdir(exist_ok=True)
                for t in range(3):
                    Image.fromarray(np.full((24, 32, 3), 40 * t, np.uint8)).save(folder / f"f{t}.png")
                path = folder
            else:
                path = Path(self.args.video)
            support = video_files.video_file_support()
            if which == "file" and support.status != "ready":
                count = self.scene.GetNumberOfNodes()
                try:
                    video_files.load_video(self.scene, path)
                except InvalidInputError as exc:
                    assert all(r in str(exc) for r in support.requirements), exc
                else:
                    raise AssertionError("a video file loaded without its packages")
                assert self.scene.GetNumberOfNodes() == count
                return "offered: " + " ".join(support.requirements)
            browser = video_files.load_video(self.scene, path)
            frames = browser.GetMasterSequenceNode().GetNumberOfDataNodes()
            assert frames == (3 if which == "folder" else self.args.video_frames), frames
            return f"works: {frames} frames"
        return run


def exporting_suffix(fmt: str) -> str:
    return {"seg.nrrd": ".seg.nrrd", "nifti": ".nii.gz", "nrrd": ".nrrd", "coco": ".json",
            "dicom-seg": ".dcm"}.get(fmt, "")


def check_export(fmt: str, result, labels, core) -> None:
    """Read the export back with an independent reader and compare with the scene's labels."""
    import numpy as np

    path = Path(result.path)
    assert Path(result.sidecar).is_file()
    if fmt == "seg.nrrd":
        node = core.logics["segmentations"].LoadSegmentationFromFile(str(path), False, "back")
        assert node is not None and node.GetSegmentation().GetNumberOfSegments() == 2
    elif fmt in ("nifti", "nrrd"):
        import SimpleITK as sitk

        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), labels)
    elif fmt == "png":
        from PIL import Image

        planes = [np.asarray(Image.open(p)) for p in sorted(path.glob("*.png"))]
        assert np.array_equal(np.stack(planes), labels)
    elif fmt == "coco":
        from pycocotools import mask as mask_utils

        doc = json.loads(path.read_text())
        assert len(doc["images"]) == labels.shape[0]
        ann = doc["annotations"][0]
        plane = labels[ann["image_id"] - 1] == ann["category_id"]
        assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), plane)
    elif fmt == "dicom-seg":
        import pydicom

        ds = pydicom.dcmread(str(path))
        assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="URL of a running polypsam server")
    parser.add_argument("--checkpoint", required=True, help="random-weight SAM2 tiny checkpoint")
    parser.add_argument("--video", required=True, help="a small mp4 file")
    parser.add_argument("--video-frames", type=int, required=True)
    parser.add_argument("--dicom", default="", help="a DICOM CT series folder (DICOM SEG)")
    args = parser.parse_args()
    f = Features(args)
    out: dict[str, object] = {}
    out["_importable"] = {m: importlib.util.find_spec(m) is not None for m in PROBED}
    out["_versions"] = {d: _version(d) for d in ("numpy", "pydicom", "pillow", "highdicom")}
    out["_installer"] = f.installer_calls()
    f.record("module imports", f.module_imports)
    f.record("first-use dependency check", f.first_use_check)
    f.record("test connection", f.test_connection)
    for operation in ("segment", "propagate", "track"):
        f.record(f"server engine: {operation}", f.server_engine(operation))
    for operation in ("segment", "propagate", "track"):
        f.record(f"in-process: {operation}", f.in_process(operation))
    from polypsam.export import FORMATS

    for fmt in FORMATS:
        f.record(f"export {fmt}", f.export(fmt))
    f.record("load video: folder of frames", f.load_video("folder"))
    f.record("load video: video file", f.load_video("file"))
    out.update(f.results)
    out["_modules"] = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps(out))
    return 0


def _version(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
