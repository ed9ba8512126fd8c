"""Check an installed SegDeep module folder on its own (run by ``test_slicer_install.py`` in a fresh process).

Usage: ``python -I installed_module_check.py MODULE_DIR HELPERS_DIR REPO_DIR``

``MODULE_DIR`` is a copy of the installed ``qt-scripted-modules`` folder, ``HELPERS_DIR`` holds
``slicer_scene.py`` (the headless slicer-core scene of the tests) and ``REPO_DIR`` is the source
checkout, which must not be used: no module may be imported from it. What a user's Slicer does
with the installed extension is checked from the module folder alone:

* the engine (``SegDeepLogic``) and the module's library (``SegDeepLib``) import from it;
* the bundled model package is found by the engine's ``list_bundled_models`` and loads;
* ``Resources/UI/SegDeep.ui`` (where ``ScriptedLoadableModule.resourcePath`` looks) parses and
  names every widget ``SegDeep.py`` binds, the icon and the sample data exist;
* the Logic segments the sample CT with the bundled model into a real MRML scene (slicer-core): one
  segment per structure on the CT's grid, each with a terminology entry Slicer parses, and exports
  the mandible as an STL (the self-test scenario with compare runs in ``test_slicer_logic.py``);
* bad input (a blank volume) gives one clear error and leaves the scene unchanged.

Prints one JSON line with what was found and exits with 0, or raises (non-zero exit).
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def _in_checkout(path: str, repo_dir: Path) -> bool:
    """True for the source checkout's own files; a virtual environment kept inside it (CI's .venv) is the
    Python installation, not the source, and stays usable."""
    resolved = Path(path).resolve()
    return resolved.is_relative_to(repo_dir) and "site-packages" not in resolved.parts


def main(module_dir: Path, helpers_dir: Path, repo_dir: Path) -> dict:
    module_dir, repo_dir = module_dir.resolve(), repo_dir.resolve()
    # The module folder first (as Slicer does); drop anything that points into the source checkout.
    sys.path[:] = [p for p in sys.path if p and not _in_checkout(p, repo_dir)]
    sys.path.insert(0, str(module_dir))
    sys.path.insert(1, str(helpers_dir))
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__name__.lower() + repr(f).lower()]
    found: dict = {}

    import SegDeepLogic
    from SegDeepLogic.model_package import load_model_package
    from SegDeepLogic.resources import bundled_model_dir, list_bundled_models

    assert Path(SegDeepLogic.__file__).resolve().is_relative_to(module_dir), SegDeepLogic.__file__
    assert bundled_model_dir().resolve() == module_dir / "Resources" / "Models", bundled_model_dir()
    models = list_bundled_models()
    assert models, f"no bundled model package in {bundled_model_dir()}"
    package = load_model_package(models[0])
    found["models"] = [p.name for p in models]
    found["model_labels"] = [label["name"] for label in package.card.labels]

    # The panel's .ui, where the widget looks for it (resourcePath: <module folder>/Resources/UI).
    ui_path = module_dir / "Resources" / "UI" / "SegDeep.ui"
    widgets = {w.get("name") for w in ET.parse(ui_path).iter("widget")}
    tree = ast.parse((module_dir / "SegDeep.py").read_text(encoding="utf-8"))
    bound = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
    }
    missing = sorted(bound - widgets)
    assert bound and not missing, f"SegDeep.py binds widgets that {ui_path.name} lacks: {missing}"
    found["ui_widgets_bound"] = len(bound)
    assert (module_dir / "Resources" / "Icons" / "SegDeep.png").is_file(), "icon missing"
    sample = module_dir / "Resources" / "SampleData" / "openkbp_pt_236"
    assert (sample / "ct.nii.gz").is_file(), "sample CT missing"
    found["sample_files"] = sorted(p.name for p in sample.iterdir())

    # The Logic on a real MRML scene, with the bundled model, from the installed tree.
    import slicer_scene
    from SegDeepLib import selftest
    from SegDeepLib.logic import SegDeepLogicBase

    headless = slicer_scene.create_scene()
    ct_path = selftest.sample_ct_path()
    assert ct_path.resolve().is_relative_to(module_dir), ct_path
    volume = slicer_scene.load_volume(headless.scene, ct_path, "SegDeepHeadNeckCT")  # (rotated grids: test_slicer_logic)
    logic = SegDeepLogicBase()
    assert [Path(m.path).resolve() for m in logic.availableModels()] == [p.resolve() for p in models]
    start = time.perf_counter()
    seg = logic.segment(volume, model=str(models[0]), device="cpu", numThreads=2)
    found["segment_s"] = round(time.perf_counter() - start, 1)
    import numpy as np
    import slicer
    import vtk
    from SegDeepLib import mrml

    segmentation = seg.GetSegmentation()
    found["segments"] = mrml.segment_names(seg)
    ijk_to_ras = mrml.ijk_to_ras_matrix(volume)
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        image = segment.GetRepresentation(mrml.BINARY_LABELMAP)
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix), ijk_to_ras, atol=1e-9), "labelmap not on the CT's grid"
        tag = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag), segment.GetName()
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic().DeserializeTerminologyEntry(str(tag), entry), str(tag)
    mandible = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("mandible"), volume)
    found["mandible_ml"] = round(float(mandible.astype(bool).sum()) * float(np.prod(volume.GetSpacing())) / 1000.0, 1)
    found["plausibility"] = logic.plausibility(seg)["verdict"]
    with tempfile.TemporaryDirectory() as folder:  # export for printing (in Slicer's process)
        reports = logic.exportForPrinting(seg, folder, format="STL", segmentNames=["mandible"], decimation=0.5)
        found["mandible_stl_watertight"] = bool(reports[0]["watertight"])
        assert Path(reports[0]["path"]).is_file()

    # Bad input: one clear error, and nothing (half-)added to the scene.
    import numpy as np
    import SimpleITK as sitk

    from SegDeepLogic.errors import SegDeepError

    with tempfile.TemporaryDirectory() as folder:
        flat = sitk.GetImageFromArray(np.zeros((6, 7, 8), np.int16))
        sitk.WriteImage(flat, str(Path(folder) / "flat.nii.gz"))
        flat_node = slicer_scene.load_volume(headless.scene, Path(folder) / "flat.nii.gz", "flat")
    before = slicer_scene.scene_snapshot(headless.scene)
    try:
        logic.segment(flat_node, model=models[0], device="cpu", numThreads=2)
    except SegDeepError as exc:
        found["bad_input_message"] = str(exc).splitlines()[0]
    else:
        raise AssertionError("a blank 6x7x8 volume was segmented without an error")
    assert slicer_scene.scene_snapshot(headless.scene) == before, "the failed run changed the scene"

    # Nothing was imported from the source checkout.
    leaked = sorted(
        name
        for name, module in list(sys.modules.items())
        if getattr(module, "__file__", None) and _in_checkout(module.__file__, repo_dir)
    )
    assert not leaked, f"modules imported from the source checkout: {leaked}"
    found["engine_file"] = os.path.relpath(SegDeepLogic.__file__, module_dir)
    return found


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))))
