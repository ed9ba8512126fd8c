"""Every .seg.nrrd SegDeep writes carries terminology that real 3D Slicer and slicerio read.

Model cards name structures with short codes (``SCT^91609006^Mandible``); Slicer's
``vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry`` (slicer-core) and
``slicerio.read_segmentation`` need the full seven-part entry. The engine builds it
(:mod:`SegDeepLogic.terminology`); here files written by ``segdeep segment`` are read back by both.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import vtk

from SegDeepLogic.errors import SegDeepError
from SegDeepLogic.segmentation_io import SegmentationFileError, SegmentInfo, read_seg_nrrd, write_seg_nrrd
from SegDeepLogic.terminology import TerminologyError, is_full_entry, terminology_codes, terminology_entry

REPO = Path(__file__).resolve().parents[1]
CARDS = [REPO / "Resources" / "Models" / "headneck-ct" / "model.json", REPO / "Testing" / "Data" / "test_model" / "model.json"]

slicer = pytest.importorskip("slicer")
slicerio = pytest.importorskip("slicerio")
import slicer_scene  # noqa: E402


def deserialize(entry: str):
    """Slicer's own parser: the entry object, or None where Slicer rejects the string."""
    parsed = slicer.vtkSlicerTerminologyEntry()
    ok = slicer.vtkSlicerTerminologiesModuleLogic().DeserializeTerminologyEntry(entry, parsed)
    return parsed if ok else None


def card_labels() -> list[dict]:
    return [label for card in CARDS for label in json.loads(card.read_text(encoding="utf-8"))["labels"]]


def test_slicer_rejects_the_short_code_and_reads_the_engines_entry():
    assert deserialize("SCT^91609006^Mandible") is None  # why the full entry is needed
    parsed = deserialize(terminology_entry("SCT^91609006^Mandible"))
    assert parsed is not None
    assert (parsed.GetTypeObject().GetCodingSchemeDesignator(), parsed.GetTypeObject().GetCodeValue()) == ("SCT", "91609006")
    assert parsed.GetCategoryObject().GetCodeValue() == "123037004"  # Anatomical Structure
    assert parsed.GetTerminologyContextName() == "Segmentation category and type - 3D Slicer General Anatomy list"


@pytest.mark.parametrize("label", card_labels(), ids=lambda label: label["name"])
def test_every_card_code_becomes_an_entry_slicer_parses(label):
    scheme, value, meaning = label["terminology"].split("^")
    entry = terminology_entry(label["terminology"], label["name"])
    parsed = deserialize(entry)
    assert parsed is not None, entry
    kind = parsed.GetTypeObject()
    assert (kind.GetCodingSchemeDesignator(), kind.GetCodeValue()) == (scheme, value)
    side = parsed.GetTypeModifierObject().GetCodeMeaning()
    if "(left)" in meaning or "(right)" in meaning:
        assert side == ("Left" if "(left)" in meaning else "Right") and kind.GetCodeMeaning() == meaning.split(" (")[0]
    else:
        assert not side and kind.GetCodeMeaning() == meaning
    category = parsed.GetCategoryObject().GetCodeMeaning()
    assert category == ("Tissue" if meaning.lower() in ("bone", "soft tissue") else "Anatomical Structure")
    assert entry == slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(parsed)


def test_bad_terminology_is_a_clear_error_and_unreadable_entries_in_files_are_dropped(tmp_path):
    for bad in ("Mandible", "SCT^^Mandible", "a~b~c"):
        with pytest.raises(TerminologyError) as info:
            terminology_entry(bad)
        assert isinstance(info.value, SegDeepError)
    with pytest.raises(SegmentationFileError, match="SCHEME\\^VALUE\\^MEANING"):
        SegmentInfo("jaw", 1, terminology="Mandible")
    assert terminology_entry(None) is None and terminology_entry("  ") is None
    assert terminology_codes(None)["type"] is None
    # a file from another program with an entry SegDeep cannot interpret still reads (without it)
    import numpy as np

    path = slicer_scene.write_seg_nrrd_with_slicer(
        tmp_path / "other.seg.nrrd", np.ones((2, 2, 2), np.uint8), [{"name": "x", "value": 1, "terminology": "free text"}]
    )
    assert read_seg_nrrd(path).segments[0].terminology is None


def test_short_codes_in_segment_info_and_old_files_become_full_entries(tmp_path, bone_data):
    from SegDeepLogic import read_volume

    ct = read_volume(bone_data / "pt_236" / "ct.nii.gz")
    labels = ct.with_array((ct.array > 300).astype("uint8"))
    info = SegmentInfo("mandible", 1, (0.9, 0.8, 0.7), "SCT^91609006^Mandible")
    assert is_full_entry(info.terminology) and info.terminology == terminology_entry("SCT^91609006^Mandible")
    path = write_seg_nrrd(labels, [info], tmp_path / "m.seg.nrrd")
    header = path.read_bytes().split(b"\n\n")[0].decode()
    assert f"TerminologyEntry:{info.terminology}|" in header


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """``segdeep segment`` with the test model (bone and soft tissue) on a crop of the sample CT: .seg.nrrd and NIfTI."""
    import SimpleITK as sitk

    folder = tmp_path_factory.mktemp("cli-terminology")
    image = sitk.ReadImage(str(REPO / "Resources" / "SampleData" / "openkbp_pt_236" / "ct.nii.gz"))
    sitk.WriteImage(image[40:88, 26:68, 26:64], str(folder / "ct.nii.gz"))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outputs = {}
    for name in ("out.seg.nrrd", "out.nii.gz"):
        result = subprocess.run(
            [sys.executable, "-m", "SegDeepLogic.cli", "segment", str(folder / "ct.nii.gz"), "-o", str(folder / name)]
            + ["--model", str(REPO / "Testing" / "Data" / "test_model"), "--device", "cpu"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = folder / name
    return outputs


def test_segment_cli_file_is_read_by_real_slicer_with_every_terminology_parsed(cli_outputs):
    node = slicer_scene.read_seg_nrrd_with_slicer(cli_outputs["out.seg.nrrd"])
    segmentation = node.GetSegmentation()
    card = json.loads(CARDS[1].read_text(encoding="utf-8"))
    assert segmentation.GetNumberOfSegments() == len(card["labels"])
    for i, label in enumerate(card["labels"]):
        segment = segmentation.GetNthSegment(i)
        assert segment.GetName() == label["name"]
        value = vtk.reference("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value), f"{label['name']}: no terminology tag"
        tag = str(value)
        parsed = deserialize(tag)
        assert parsed is not None, tag
        assert parsed.GetTypeObject().GetCodeValue() == label["terminology"].split("^")[1]


def test_segment_cli_file_is_read_by_slicerio(cli_outputs):
    segmentation = slicerio.read_segmentation(str(cli_outputs["out.seg.nrrd"]))
    card = json.loads(CARDS[1].read_text(encoding="utf-8"))
    assert [s["name"] for s in segmentation["segments"]] == [label["name"] for label in card["labels"]]
    for segment, label in zip(segmentation["segments"], card["labels"]):
        scheme, value, meaning = label["terminology"].split("^")
        assert segment["terminology"]["type"] == [scheme, value, meaning]
        assert segment["terminology"]["contextName"].startswith("Segmentation category and type")
    assert segmentation["voxels"].shape == (48, 42, 38)  # slicerio: i, j, k


def test_segment_cli_labels_csv_has_the_terminology_columns(cli_outputs):
    csv_path = cli_outputs["out.nii.gz"].with_name("out.labels.csv")
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    card = json.loads(CARDS[1].read_text(encoding="utf-8"))
    by_name = {row["Name"]: row for row in rows}
    for label in card["labels"]:
        scheme, value, meaning = label["terminology"].split("^")
        row = by_name[label["name"]]
        assert (row["Type_CodingScheme"], row["Type_CodeValue"], row["Type_CodeMeaning"]) == (scheme, value, meaning)
        assert row["Category_CodeMeaning"] == "Tissue"


def test_threshold_cli_bone_segment_carries_the_bone_entry(cli_outputs):
    folder = cli_outputs["out.seg.nrrd"].parent
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, "-m", "SegDeepLogic.cli", "threshold", str(folder / "ct.nii.gz"), "-o", str(folder / "bone.seg.nrrd")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    segment = slicerio.read_segmentation(str(folder / "bone.seg.nrrd"), skip_voxels=True)["segments"][0]
    assert segment["terminology"]["category"] == ["SCT", "85756007", "Tissue"]
    assert segment["terminology"]["type"] == ["SCT", "272673000", "Bone"]
