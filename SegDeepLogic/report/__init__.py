"""Per-case report: pictures, comparison tables, mesh print-readiness and provenance.

>>> from SegDeepLogic.report import build_report, write_report
>>> facts = build_report("ct.nii.gz", model="Testing/Data/test_model")  # doctest: +SKIP
>>> write_report(facts, "report.html")  # doctest: +SKIP
(PosixPath('report.html'), PosixPath('report.json'))

:func:`build_report` collects the facts (:mod:`.facts`), :mod:`.figures` draws the pictures
headless, :func:`write_report` writes a self-contained HTML file and a JSON file with the
same facts, atomically and together (:mod:`.html`).
"""

from .facts import ReportError, ReportFacts, build_report, parse_threshold
from .html import render_html, write_report
from .options import ReportOptions

__all__ = [
    "ReportError",
    "ReportFacts",
    "ReportOptions",
    "build_report",
    "parse_threshold",
    "render_html",
    "write_report",
]
