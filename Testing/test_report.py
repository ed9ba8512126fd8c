"""The per-case report: facts equal the engine's numbers, the HTML is self-contained and renders
in a real browser (headless Chromium), files are written all together or not at all, and a
network result's out-of-distribution verdict is shown at the top (a red banner for "mismatch")."""

from __future__ import annotations

import dataclasses
import html
import html.parser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from SegDeepLogic import Volume, write_volume
from SegDeepLogic.cli import main as cli_main
from SegDeepLogic.mesh import mask_to_mesh
from SegDeepLogic.mesh_report import mesh_report, surface_deviation_mm
from SegDeepLogic.metrics import compare_masks
from SegDeepLogic.plausibility import check_plausibility, image_features
from SegDeepLogic.report import build_report, parse_threshold, write_report
from SegDeepLogic.report import html as report_html
from SegDeepLogic.report.facts import ReportError
from SegDeepLogic.segmentation_io import Segmentation, SegmentInfo, write_labelmap_nifti
from SegDeepLogic.threshold import grow_mask
from SegDeepLogic.verdicts import PLAUSIBILITY_HEADLINES

ROOT = Path(__file__).resolve().parents[1]
TEST_MODEL = ROOT / "Testing" / "Data" / "test_model"
SPACING = (1.0, 1.25, 2.0)  # i, j, k (mm)
DIRECTION = np.diag([1.0, 1.0, -1.0])  # LPI, as the bundled CT


def _phantom() -> tuple[Volume, Segmentation, Segmentation, Volume]:
    """A small CT (air, a water body, a U-shaped bone, a far-away bone, a soft organ) and its segmentations."""
    nk, nj, ni = 36, 48, 60
    k, j, i = np.mgrid[:nk, :nj, :ni]
    x, y, z = i * SPACING[0], j * SPACING[1], k * SPACING[2]  # mm
    ct = np.full((nk, nj, ni), -1000, np.int16)
    body = ((x - 30) / 27) ** 2 + ((y - 30) / 26) ** 2 <= 1
    ct[body] = 40
    r = np.hypot(x - 30, y - 34)
    bone = (r >= 14) & (r <= 19) & (y <= 36) & (z >= 20) & (z <= 50)  # a "mandible": U-shaped arch
    ct[bone] = 1100
    stray = (np.abs(x - 30) <= 3) & (np.abs(y - 52) <= 3) & (z >= 10) & (z <= 60)  # a vertebra-like bone > 10 mm away
    ct[stray] = 900
    organ = ((x - 30) / 6) ** 2 + ((y - 40) / 5) ** 2 + ((z - 36) / 8) ** 2 <= 1
    ct[organ] = 45
    vol = Volume(ct, SPACING, (10.0, -20.0, 30.0), DIRECTION)

    labels = np.zeros(ct.shape, np.uint8)
    network_bone = bone | ((r >= 13) & (r < 14) & (y <= 36) & (z >= 20) & (z <= 44))  # a bit too thick inside
    labels[network_bone] = 1
    labels[organ] = 2
    segments = [SegmentInfo("mandible", 1, (0.95, 0.85, 0.6)), SegmentInfo("parotid", 2, (0.8, 0.4, 0.3))]
    segments.append(SegmentInfo("maxilla", 3))  # the network misses it; the reference has it
    seg = Segmentation(vol.with_array(labels), segments)
    ref_labels = np.roll(labels, 1, axis=2)
    ref_labels[30:34, 10:14, 20:40] = 3
    ref = Segmentation(vol.with_array(ref_labels), segments)
    uncertainty = vol.with_array(np.clip(np.abs(np.sin(x / 7.0) * np.cos(y / 5.0)) * (labels > 0), 0, 1).astype(np.float32))
    return vol, seg, ref, uncertainty


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ct, seg, ref, unc = _phantom()
    out = tmp_path_factory.mktemp("report")
    facts = build_report(ct, segmentation=seg, reference=ref, uncertainty=unc, export_dir=out / "meshes", threshold="bone")
    html_path, json_path = write_report(facts, out / "case.html")
    return {"ct": ct, "seg": seg, "ref": ref, "unc": unc, "facts": facts, "html": html_path, "json": json_path, "dir": out}


@pytest.fixture(scope="module")
def network_result(case: dict):  # noqa: ANN201
    """The test model run on the phantom CT (its card has no reference statistics: verdict "unchecked")."""
    from SegDeepLogic.segment import segment_volume

    return segment_volume(case["ct"], str(TEST_MODEL), device="cpu", num_threads=1)


def _mismatch_check(ct: Volume, result) -> dict:  # noqa: ANN001
    """A real ``check_plausibility`` verdict "mismatch" for ``result``: the reference says the training CTs had
    far larger bodies and a far larger bone, contoured in every case (a core structure)."""

    def q(lo: float, hi: float) -> dict:
        return {"n": 12, "min": lo, "p01": lo, "median": (lo + hi) / 2, "p99": hi, "max": hi}

    reference = {
        "n_cases": 12,
        "image": {"body_area_cm2": q(150.0, 400.0)},
        "volumes_ml": {"bone": q(500.0, 900.0), "soft_tissue": q(1000.0, 3000.0)},
        "contoured_fraction": {"bone": 1.0, "soft_tissue": 0.5},
        "core_structures": ["bone"],
    }
    labels = result.labels
    volumes = {
        s.name: float(np.count_nonzero(labels.array == s.value)) * labels.voxel_volume_mm3 / 1000.0 for s in result.segments
    }
    check = check_plausibility(image_features(ct.array, ct.spacing_kji), volumes, reference)
    assert check["verdict"] == "mismatch", check
    assert {f["check"] for f in check["findings"]} >= {"image", "anatomy"}, check
    return check


@pytest.fixture(scope="module")
def mismatch(case: dict, network_result, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    """The report of a network result whose out-of-distribution verdict is "mismatch"."""
    check = _mismatch_check(case["ct"], network_result)
    result = dataclasses.replace(network_result, plausibility=check)
    facts = build_report(case["ct"], segmentation=result)
    html_path, json_path = write_report(facts, tmp_path_factory.mktemp("mismatch") / "mismatch.html")
    return {"check": check, "facts": facts, "html": html_path, "json": json_path}


def _ood_boxes(text: str) -> list[dict]:
    """Every out-of-distribution box (``<div class="ood ...">``): classes, attributes and visible text."""
    boxes = []
    for m in re.finditer(r'<div class="(ood [^"]*)"([^>]*)>(.*?)</div>', text, re.S):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(2)))
        visible = html.unescape(re.sub(r"<[^>]+>", " ", m.group(3)))
        boxes.append({"class": m.group(1), "attrs": attrs, "text": " ".join(visible.split()), "start": m.start()})
    return boxes


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("definitions", "roles")}


def _json_equal(a, b) -> bool:  # noqa: ANN001
    return json.loads(json.dumps(a)) == json.loads(json.dumps(b))


def _lookup(data, key: str):  # noqa: ANN001, ANN202
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


class _Cells(html.parser.HTMLParser):
    """Collects ``data-key``/``data-value`` cells with their text, and every <img> src."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.images: list[str] = []
        self._cell: dict | None = None
        self.by_id: dict[str, str] = {}
        self._id: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "td" and "data-key" in a:
            self._cell = {"key": a["data-key"], "value": json.loads(a["data-value"]), "text": ""}
        if "id" in a:
            self._id = a["id"]
            self.by_id[self._id] = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._id is not None:
            self.by_id[self._id] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None
        self._id = None


def _parse(text: str) -> _Cells:
    parser = _Cells()
    parser.feed(text)
    return parser


# --- the facts are the engine's numbers -----------------------------------------------------------
def test_threshold_comparison_is_compare_masks_in_the_grown_region(case: dict) -> None:
    ct, seg = case["ct"], case["seg"]
    data = json.loads(case["json"].read_text())
    assert data == case["facts"].data
    mandible = seg.mask("mandible")
    region = grow_mask(mandible.array, 10.0, spacing_mm=ct.spacing_kji)
    threshold = (ct.array >= 226) & (ct.array <= 3071)
    expected = compare_masks(mandible, mandible.with_array(threshold & region)).to_dict()
    row = data["structures"][0]
    got = row["threshold_comparison"]
    assert got["applies"] is True
    assert _json_equal({k: got[k] for k in _strip(expected)}, _strip(expected))
    # the far bone is outside the region: the threshold volume is the arch only
    assert got["volume_b_ml"] == pytest.approx(np.count_nonzero(threshold & region) * ct.voxel_volume_mm3 / 1000)
    assert np.count_nonzero(threshold & ~region) > 0
    assert data["structures"][1]["threshold_comparison"] == {"applies": False}
    assert data["threshold"]["structures"] == ["mandible", "maxilla"]
    assert "bone" in data["threshold"]["reason"]
    missed = data["structures"][2]
    assert missed["empty"] and missed["volume_ml"] == 0.0 and missed["images"] == []
    assert missed["reference_comparison"]["dice"] == 0.0 and missed["reference_comparison"]["hd_mm"] is None
    assert missed["reference_comparison"]["volume_b_ml"] == pytest.approx(16 * 20 * np.prod(SPACING) / 1000)


def test_reference_mesh_uncertainty_and_volumes_match_the_engine(case: dict) -> None:
    ct, seg, ref, unc = case["ct"], case["seg"], case["ref"], case["unc"]
    data = case["facts"].data
    from SegDeepLogic.uncertainty import summarize_uncertainty

    summary = {row["name"]: row for row in summarize_uncertainty(seg.labelmap, unc, seg.segments)}
    for index, name in enumerate(["mandible", "parotid"]):
        row = data["structures"][index]
        mask = seg.mask(name)
        assert row["volume_ml"] == pytest.approx(np.count_nonzero(mask.array) * ct.voxel_volume_mm3 / 1000, rel=1e-12)
        expected = _strip(compare_masks(mask, ref.mask(name)).to_dict())
        assert _json_equal({k: row["reference_comparison"][k] for k in expected}, expected)
        mesh, raw = mask_to_mesh(mask, return_raw=True)
        deviation = surface_deviation_mm(mesh, raw)
        report = mesh_report(mesh, mask=mask, deviation_mm=deviation, name=name, smoothing_factor=0.5, decimation=0.0)
        got = dict(row["mesh"])
        assert Path(got.pop("file")) == (case["dir"] / "meshes" / f"{name}.stl").resolve()
        expected_mesh = json.loads(json.dumps(report.to_dict()))
        assert got.keys() == expected_mesh.keys()
        for key, value in expected_mesh.items():  # the report meshes a crop: equal to VTK's float32 rounding
            tolerance = {"abs": 1e-4} if key == "volume_difference_percent" else {"rel": 1e-6, "abs": 1e-6}
            assert got[key] == (pytest.approx(value, **tolerance) if not isinstance(value, str) else value), key
        assert (case["dir"] / "meshes" / f"{name}.stl").is_file()
        expected_unc = {k: v for k, v in summary[name].items() if k not in ("name", "value")}
        assert _json_equal(row["uncertainty"], expected_unc)
        assert row["surface_distance"]["to"] == "reference"


def test_provenance(case: dict) -> None:
    data = case["facts"].data
    geometry = data["input"]["geometry"]
    assert geometry["size_ijk"] == [60, 48, 36]
    assert geometry["spacing_mm"] == list(SPACING)
    assert geometry["orientation"] == "LPI" and geometry["coordinate_system"] == "LPS"
    assert geometry["origin_lps_mm"] == [10.0, -20.0, 30.0]
    for key in ("segdeep", "python", "torch", "numpy", "SimpleITK", "vtk"):
        assert data["software"][key]
    assert data["parameters"]["mesh"] == {
        "format": "stl",
        "space": "LPS",
        "smoothing_factor": 0.5,
        "decimation": 0.0,
        "export_dir": str((case["dir"] / "meshes").resolve()),
        "units": "mm",
    }
    assert data["threshold"]["parameters"]["lower_hu"] == 226.0
    assert data["created_utc"].endswith("+00:00")
    for stage in ("read", "threshold", "compare_threshold", "compare_reference", "meshes", "deviation", "figures"):
        assert data["timings_s"][stage] >= 0


# --- the HTML ---------------------------------------------------------------------------------
def test_html_is_self_contained_and_tables_hold_the_facts(case: dict) -> None:
    text = case["html"].read_text()
    parsed = _parse(text)
    assert f'content="{report_html.CSP}"' in text
    assert len(parsed.images) == 4  # slices + mesh for each of the two structures
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert "http://" not in text and "https://" not in text
    assert len(parsed.cells) > 100
    for cell in parsed.cells:
        assert _lookup(case["facts"].data, cell["key"]) == cell["value"], cell["key"]
    # a segmentation file: the network did not run here, so there is no out-of-distribution check to show
    assert case["facts"].data["plausibility"] is None
    assert "plausibility-banner" not in text and not _ood_boxes(text) and 'id="plausibility"' not in text


# --- the out-of-distribution verdict --------------------------------------------------------------
def test_mismatch_verdict_is_a_red_banner_and_every_finding_is_in_the_html_and_the_json(mismatch: dict) -> None:
    check = mismatch["check"]
    messages = [f["message"] for f in check["findings"]]
    data = json.loads(mismatch["json"].read_text())
    assert data == mismatch["facts"].data
    plaus = data["plausibility"]
    assert plaus["verdict"] == "mismatch" and plaus["headline"] == PLAUSIBILITY_HEADLINES["mismatch"]
    assert "do not use" in plaus["headline"] and "Out-of-distribution" in plaus["definition"]
    assert _json_equal(plaus["findings"], check["findings"]) and _json_equal(plaus["features"], check["features"])

    text = mismatch["html"].read_text()
    boxes = _ood_boxes(text)
    banner = boxes[0]
    assert banner["attrs"]["id"] == "plausibility-banner" and banner["attrs"]["data-verdict"] == "mismatch"
    assert banner["class"] == "ood ood-mismatch" and banner["attrs"]["role"] == "alert"
    assert "Out-of-distribution check: MISMATCH" in banner["text"] and PLAUSIBILITY_HEADLINES["mismatch"] in banner["text"]
    for message in messages:
        assert message in banner["text"], message
    assert banner["start"] < text.index("<h2"), "the banner comes before every section"
    assert ".ood-mismatch{background:#fde7e9;border-color:#b00020" in text  # red
    # the section lists every finding, in cells holding the JSON's values
    parsed = _parse(text)
    cells = {c["key"]: c for c in parsed.cells}
    for i, message in enumerate(messages):
        assert cells[f"plausibility.findings.{i}.message"]["text"] == message
    assert cells["plausibility.verdict"]["value"] == "mismatch"
    assert cells["plausibility.features.body_area_cm2"]["value"] == check["features"]["body_area_cm2"]
    for cell in parsed.cells:
        assert _lookup(data, cell["key"]) == cell["value"], cell["key"]
    # each structure's uncertainty section repeats the verdict, with the findings about that structure
    per_structure = {b["attrs"]["data-structure"]: b for b in boxes if "data-structure" in b["attrs"]}
    assert set(per_structure) == {s["name"] for s in data["structures"]}
    for name, box in per_structure.items():
        assert box["class"] == "ood ood-small ood-mismatch", name
        assert "Out-of-distribution check: MISMATCH" in box["text"], name
    anatomy = next(f["message"] for f in check["findings"] if f["check"] == "anatomy")
    assert anatomy in per_structure["bone"]["text"] and anatomy not in per_structure["soft_tissue"]["text"]
    section = text[text.index('<h2 id="structure-0">') :]
    assert section.index("<h3>Uncertainty") < section.index('data-structure="bone"') < section.index("mean_entropy_inside")


def test_unchecked_verdict_and_a_result_without_a_check_are_shown_grey(case: dict, network_result) -> None:  # noqa: ANN001
    assert network_result.plausibility["verdict"] == "unchecked"  # the test model's card has no reference statistics
    for result, finding in (
        (network_result, network_result.plausibility["findings"][0]["message"]),
        (dataclasses.replace(network_result, plausibility=None), "carries no out-of-distribution check"),
    ):
        facts = build_report(case["ct"], segmentation=result)
        plaus = facts.data["plausibility"]
        assert plaus["verdict"] == "unchecked" and finding in plaus["findings"][0]["message"]
        banner = _ood_boxes(report_html.render_html(facts))[0]
        assert banner["class"] == "ood ood-unchecked" and "role" not in banner["attrs"]
        assert "Out-of-distribution check: NOT CHECKED" in banner["text"] and finding in banner["text"]


def _chromium() -> str | None:
    for name in (os.environ.get("SEGDEEP_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (img) { out.push(img.complete ? img.naturalWidth : -1); });
  var pre = document.createElement('pre'); pre.id = 'imgcheck'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


def _require_chromium() -> str:
    browser = _chromium()
    if browser is None:
        if os.environ.get("SEGDEEP_REQUIRE_CHROMIUM"):
            pytest.fail("Chromium is required (SEGDEEP_REQUIRE_CHROMIUM is set) but not found; apt-get install chromium")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    return browser


def _chromium_flags(tmp_path: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]


def _page_with_script(report_file: Path, script: str, page: Path) -> Path:
    """A copy of the report whose CSP also allows ``script`` (inline, run on load); images stay data:-only."""
    text = report_file.read_text()
    text = text.replace(report_html.CSP, report_html.CSP + "; script-src 'unsafe-inline'").replace("</body>", script)
    page.write_text(text)
    return page


def test_report_renders_in_headless_chromium(case: dict, tmp_path: Path) -> None:
    browser = _require_chromium()
    page = _page_with_script(case["html"], _CHECK_SCRIPT, tmp_path / "page.html")
    flags = _chromium_flags(tmp_path)
    run = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = _parse(run.stdout)
    widths = json.loads(dom.by_id["imgcheck"])
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
    # the browser's DOM holds the engine's numbers, shown rounded
    ct, seg = case["ct"], case["seg"]
    mandible = seg.mask("mandible")
    region = grow_mask(mandible.array, 10.0, spacing_mm=ct.spacing_kji)
    expected = compare_masks(mandible, mandible.with_array((ct.array >= 226) & region))
    cells = {c["key"]: c for c in dom.cells}
    for metric in ("dice", "jaccard", "hd_mm", "hd95_mm", "assd_mm", "surface_dice", "volume_a_ml", "volume_b_ml"):
        cell = cells[f"structures.0.threshold_comparison.{metric}"]
        assert cell["value"] == getattr(expected, metric)
        assert cell["text"] == report_html._fmt(getattr(expected, metric))
    assert cells["structures.0.mesh.watertight"]["text"] == "yes"
    screenshot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *flags, "--window-size=1280,1600", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.stat().st_size > 10_000


_OOD_SCRIPT = """<script>
window.addEventListener('load', function () {
  var banner = document.getElementById('plausibility-banner'), style = getComputedStyle(banner);
  var box = banner.getBoundingClientRect();
  var out = {background: style.backgroundColor, border: style.borderLeftColor, display: style.display,
             visibility: style.visibility, top: box.top, height: box.height, text: banner.innerText,
             firstSection: document.querySelector('h2').getBoundingClientRect().top};
  var pre = document.createElement('pre'); pre.id = 'oodcheck'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def test_mismatch_banner_is_red_and_at_the_top_in_headless_chromium(mismatch: dict, tmp_path: Path) -> None:
    browser = _require_chromium()
    page = _page_with_script(mismatch["html"], _OOD_SCRIPT, tmp_path / "page.html")
    run = subprocess.run(
        [browser, *_chromium_flags(tmp_path), "--window-size=1280,900", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(_parse(run.stdout).by_id["oodcheck"])
    assert seen["display"] == "block" and seen["visibility"] == "visible" and seen["height"] > 40
    assert 0 <= seen["top"] < seen["firstSection"] and seen["top"] < 200, seen  # under the title, above everything else
    red, green, blue = _rgb(seen["background"])
    assert red > green + 15 and red > blue + 10, seen["background"]  # a red banner
    red, green, blue = _rgb(seen["border"])
    assert red > 150 and green < 60 and blue < 80, seen["border"]
    assert "Out-of-distribution check: MISMATCH" in seen["text"]
    for finding in mismatch["check"]["findings"]:
        assert finding["message"] in seen["text"], finding["message"]


# --- writing: all or nothing, no overwrite -------------------------------------------------------
def test_refuses_to_overwrite_and_writes_nothing_on_failure(case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = case["facts"]
    target = tmp_path / "r.html"
    target.write_text("old")
    with pytest.raises(FileExistsError):
        write_report(facts, target)
    assert target.read_text() == "old" and not (tmp_path / "r.json").exists()

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("disk full")

    # a mesh fails after the HTML and JSON temporary files were written: nothing appears
    export = tmp_path / "out"
    facts_with_meshes = build_report(case["ct"], segmentation=case["seg"], export_dir=export / "meshes")
    monkeypatch.setattr(report_html, "write_mesh", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(facts_with_meshes, export / "r.html")
    assert not any(p.is_file() for p in export.rglob("*")), list(export.rglob("*"))
    monkeypatch.undo()

    # a rename fails part-way: the files already renamed are removed again
    real_replace = os.replace
    calls = []

    def replace_once(src, dst):  # noqa: ANN001, ANN202
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(OSError, match="rename failed"):
        write_report(dataclasses.replace(case["facts"], meshes=[]), tmp_path / "p.html")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["r.html"]


def test_cli_runs_the_network_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ct, seg, ref, _ = _phantom()
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_labelmap_nifti(ref.labelmap, list(ref.segments), tmp_path / "ref.nii.gz")
    out = tmp_path / "report.html"
    args = ["report", str(tmp_path / "ct.nii.gz"), "-o", str(out), "--model", str(TEST_MODEL), "--device", "cpu"]
    args += ["--threads", "1", "--no-progress", "--reference", str(tmp_path / "ref.nii.gz"), "--reference-label", "bone=mandible"]
    assert cli_main(args) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    model = data["segmentation"]["model"]
    assert model["weights_sha256"] == json.loads((TEST_MODEL / "model.json").read_text())["weights_sha256"]
    assert model["name"].startswith("SegDeep test model") and model["version"] == "1.0.0"
    assert data["segmentation"]["device"] == "cpu" and data["segmentation"]["fallbacks"] == []
    assert data["timings_s"]["network_stages"]["network"] > 0
    assert data["input"]["ct"]["sha256"] and data["input"]["ct"]["path"].endswith("ct.nii.gz")
    assert [s["name"] for s in data["structures"]] == ["bone", "soft_tissue"]
    assert data["structures"][0]["reference_segment"] == "mandible"
    assert data["threshold"]["structures"] == ["bone"]
    before = out.read_bytes()
    capsys.readouterr()
    assert cli_main(args) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    # a bad threshold fails before anything is written
    assert (
        cli_main(
            [*args[:4], "-o", str(tmp_path / "bad.html"), "--segmentation", str(tmp_path / "ref.nii.gz"), "--threshold", "x:y"]
        )
        == 1
    )
    assert not (tmp_path / "bad.html").exists() and not (tmp_path / "bad.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ct.nii.gz",
        "ref.labels.csv",
        "ref.labels.json",
        "ref.nii.gz",
        "report.html",
        "report.json",
    ]


# --- helpers ------------------------------------------------------------------------------------
def test_parse_threshold() -> None:
    assert parse_threshold("compact_bone_adult") == {"preset": "compact_bone_adult"}
    assert parse_threshold(":500") == {"lower_hu": None, "upper_hu": 500.0}
    assert parse_threshold("300") == {"lower_hu": 300.0, "upper_hu": None}
    for bad in ("bones", ":", "a:b"):
        with pytest.raises(ReportError):
            parse_threshold(bad)


def test_segmentation_result_from_slicer_and_cancel(case: dict, network_result) -> None:  # noqa: ANN001
    from SegDeepLogic.errors import CancelledError
    from SegDeepLogic.progress import CancelToken

    ct = case["ct"]
    result = network_result
    stages = []
    facts = build_report(ct, segmentation=result, progress=lambda f, s: stages.append((f, s)))
    data = facts.data
    assert data["segmentation"]["device"] == "cpu" and data["segmentation"]["model"]["version"] == "1.0.0"
    assert data["timings_s"]["network_stages"] == pytest.approx(result.timings_s)
    for row, expected in zip(data["structures"], result.uncertainty_summary, strict=True):
        assert row["name"] == expected["name"]
        if row.get("uncertainty"):
            assert row["uncertainty"]["mean_entropy_inside"] == expected["mean_entropy_inside"]
    assert _json_equal(data["plausibility"]["findings"], result.plausibility["findings"])
    assert stages[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in stages)
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        build_report(ct, segmentation=result, cancel=token)
