"""The Slicer module's print preparation (3MF, hollowing, markups cutting planes) against real MRML (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core (real MRML) is not installed")

import slicer  # noqa: E402
import slicer_scene  # noqa: E402

from SegDeepLogic.errors import MeshError  # noqa: E402
from SegDeepLogic.mesh_3mf import read_3mf  # noqa: E402
from SegDeepLogic.mesh_report import mesh_topology  # noqa: E402

slicer_scene.add_module_path()

from SegDeepLib import mrml  # noqa: E402
from SegDeepLib.logic import SegDeepLogicBase  # noqa: E402


@pytest.fixture(scope="module")
def planning_node():
    headless = slicer_scene.create_scene()
    spacing, origin = (1.0, 1.0, 1.0), (-20.0, 10.0, 5.0)  # RAS
    matrix = np.diag([*spacing, 1.0])
    matrix[:3, 3] = origin
    node = headless.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Plan")
    block = np.zeros((30, 40, 40), bool)  # k, j, i
    block[5:25, 5:30, 5:25] = True
    zz, yy, xx = np.mgrid[:30, :40, :40]
    nerve = (xx - 32) ** 2 + (yy - 20) ** 2 < 9
    nerve &= (zz > 5) & (zz < 25)
    reference = slicer.util.addVolumeFromArray(np.zeros(block.shape, np.int16), ijkToRAS=matrix, name="plan reference")
    node.GetSegmentation().SetSourceRepresentationName(mrml.BINARY_LABELMAP)
    mrml.add_mask_segment(node, block, "mandible", (0.9, 0.8, 0.5), reference)
    mrml.add_mask_segment(node, nerve, "nerve", (1.0, 0.9, 0.0), reference)
    headless.scene.RemoveNode(reference)
    return headless, node


def test_console_export_3mf_hollowed_and_cut_by_a_markups_plane(planning_node, tmp_path) -> None:
    headless, node = planning_node
    logic = SegDeepLogicBase()
    plane = headless.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "osteotomy")
    plane.SetOriginWorld([-10.0, 25.0, 20.0])  # RAS: x = -10 mm, inside the block (RAS x -15 .. -4.5)
    plane.SetNormalWorld([1.0, 0.0, 0.0])  # towards the patient's right
    reports = logic.exportForPrinting(
        node,
        tmp_path,
        format="3MF",
        smoothing=0.3,
        hollowWallMm=2.0,
        voxelMm=0.5,
        cutPlanes=[plane],
        prepSegmentNames=["mandible"],
        thinThresholdMm=0.8,
        buildVolumeMm=(250, 210, 220),
    )
    assert {r["file"] for r in reports} == {"Plan.3mf"}
    assert [r["name"] for r in reports] == ["mandible_osteotomy-right", "mandible_osteotomy-left", "nerve"]
    assert [r["segment"] for r in reports] == ["mandible", "mandible", "nerve"]
    model = read_3mf(tmp_path / "Plan.3mf")
    assert model.space == "LPS" and model.unit == "millimeter"
    assert [p.name for p in model.parts] == [r["name"] for r in reports]
    assert model.parts[0].color == pytest.approx((0.902, 0.8, 0.502), abs=2e-3)
    for part, r in zip(model.parts, reports):  # noqa: B905 (same length asserted above)
        topo = mesh_topology(part.mesh.faces, part.mesh.n_vertices)
        assert topo.watertight and topo.manifold and r["print_ready"] and r["fits_build_volume"]
    # the plane is RAS x = -10, i.e. LPS x = +10: the "right" (RAS +x) piece lies at LPS x <= 10
    assert reports[0]["bounds_max_mm"][0] == pytest.approx(10.0, abs=1e-6)
    assert reports[1]["bounds_min_mm"][0] == pytest.approx(10.0, abs=1e-6)
    assert abs(reports[0]["hollowing"]["measured_wall_min_mm"] - 2.0) <= 0.25
    table = logic.createPrintReportTable(reports, node)
    assert table.GetNumberOfRows() == 3
    assert table.GetTable().GetValueByName(0, "Part").ToString() == "mandible_osteotomy-right"


def test_console_export_refuses_a_plane_missing_the_segment_and_writes_nothing(planning_node, tmp_path) -> None:
    _, node = planning_node
    with pytest.raises(MeshError, match="does not cut"):
        SegDeepLogicBase().exportForPrinting(
            node, tmp_path / "out", format="3MF", cutPlanes=[((500.0, 0.0, 0.0), (1.0, 0.0, 0.0))]
        )
    assert not (tmp_path / "out").exists()
