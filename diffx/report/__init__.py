"""The interactive HTML page of one or more traces: columns of frames, sections, the page (template.html)."""

from diffx.report.page import render_report_html, write_report

__all__ = [
    "render_report_html",
    "write_report",
]
