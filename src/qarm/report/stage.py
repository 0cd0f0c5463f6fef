"""The ``report`` stage: one self-contained ``report.html`` from the run directory.

Each section reads only what its stage left behind; a stage that has not run gets one sentence
saying so, and a section that fails to draw (a corrupt artifact) gets an error box naming the
problem, so one bad artifact never costs the rest of the report.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from tqdm import tqdm

from qarm.config import Config
from qarm.io import write_bytes
from qarm.report import html as H
from qarm.report.behaviour import align_section, pairs_section
from qarm.report.codes import codes_section
from qarm.report.context import ReportContext
from qarm.report.overview import pipeline_section, prepare_section
from qarm.report.ranking import ranking_section
from qarm.report.retrieval import retrieval_section
from qarm.runner import RunDir

SECTIONS: tuple[tuple[str, str, Callable[[ReportContext], str]], ...] = (
    ("pipeline", "Pipeline summary", pipeline_section),
    ("data", "Data", prepare_section),
    ("pairs", "Pairs mined from behaviour", pairs_section),
    ("alignment", "Alignment: before and after", align_section),
    ("codes", "Codes: usage and collisions", codes_section),
    ("ranking", "Ranking ablation", ranking_section),
    ("retrieval", "Generative retrieval on the codes", retrieval_section),
)


def build_report(cfg: Config, run: RunDir) -> tuple[str, list[str]]:
    """The report HTML and the names of the sections that failed to draw."""
    ctx = ReportContext.load(cfg, run)
    rendered, failed = [], []
    for anchor, title, draw in tqdm(SECTIONS, desc="report", unit="section", leave=False):
        try:
            body = draw(ctx)
        except Exception as exc:  # one unreadable artifact must not cost the whole report
            failed.append(title)
            print(f"[report] section '{title}' could not be drawn: {type(exc).__name__}: {exc}", file=sys.stderr)
            body = H.error_box(f"This section could not be drawn: {type(exc).__name__}: {exc}")
        rendered.append((anchor, title, body))
    subtitle = f"{cfg.name} · seed {cfg.seed} · run directory {run.path}"
    return H.page(cfg.report.title, subtitle, rendered), failed


def run_report(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Write ``run/report.html``. Returns no figures: the report reads metrics.json, it adds nothing to it."""
    page, failed = build_report(cfg, run)
    write_bytes(run / "report.html", page.encode("utf-8"))
    if failed:
        print(f"[report] {len(failed)} section(s) could not be drawn: {', '.join(failed)}", file=sys.stderr)
    return {}
