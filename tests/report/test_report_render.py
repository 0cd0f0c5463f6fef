"""report.html: self-contained, every section drawn, opened in real headless Chromium with no broken image."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qarm.io import read_json, write_bytes, write_npy
from qarm.report.stage import SECTIONS, build_report
from qarm.runner import RunDir, run_stages
from report_fixtures import render

IMG_SRC = re.compile(r'<img src="([^"]*)"')


def _pngs(page: str) -> list[np.ndarray]:
    out = []
    for src in IMG_SRC.findall(page):
        assert src.startswith("data:image/png;base64,"), f"image not embedded: {src[:60]}"
        out.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L")))
    return out


def test_full_report_is_self_contained_and_renders_in_chromium(fake_run, chromium, tmp_path):
    cfg, run = fake_run()
    metrics_before = read_json(run / "metrics.json")
    run_stages(cfg, run, stages=["report"], log=lambda _: None)

    assert read_json(run / "metrics.json") == metrics_before, "the report stage must not write figures"
    assert "report" in read_json(run / "manifest.json")["stages"]
    page = (run / "report.html").read_text()
    # self-contained: no external resource of any kind
    for external in ('src="http', "href=\"http", "<link", "url(", "@import", "<script src"):
        assert external not in page
    assert 'class="error"' not in page and "has not run" not in page
    for _, title, _ in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    images = _pngs(page)
    assert len(images) >= 15, "every section should have drawn its plots"
    assert all(im.shape[0] > 100 and im.shape[1] > 200 and im.std() > 5 for im in images), "blank or tiny plot"
    for alt in ("wall time per stage", "pair counts and score histograms", "recall raw against aligned",
                "PCA projection of raw and aligned embeddings", "RQ code usage per level", "items per full RQ code",
                "ranking ablation AUC and GAUC", "cold-start AUC by variant", "AUC per frequency bucket",
                "Recall@K curves", "Recall@10 by frequency bucket"):
        assert f'alt="{alt}"' in page
    # the ablation table holds mean ± std of every variant
    for variant in ("id", "frozen_mm", "ia_rep", "vq", "rq", "qarm"):
        assert f"<td>{variant}</td>" in page
    assert "0.7300 ± " in page and "0.6250 ± 0.0100" in page  # qarm click AUC, qarm cold AUC

    shot = tmp_path / "report.png"
    dom = render(chromium, run / "report.html", screenshot=shot, height=3000)
    assert f'data-images="{len(images)}"' in dom, "the page's load script did not run"
    assert 'data-broken-images="0"' in dom
    for _, title, _ in SECTIONS:
        assert f"<h2>{title}</h2>" in dom
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "screenshot looks blank"


def test_report_after_prepare_only_says_which_stages_have_not_run(fake_run):
    cfg, run = fake_run(stages=["prepare"])
    run_stages(cfg, run, stages=["report"], log=lambda _: None)
    page = (run / "report.html").read_text()
    for stage in ("pairs", "align", "quantize", "train"):
        assert f"The {stage} stage has not run in this run directory" in page
    assert 'class="error"' not in page
    assert 'alt="events per split and modality coverage"' in page and len(_pngs(page)) == 3
    assert "<td>pairs</td><td>not run</td>" in page


def test_report_of_an_empty_run_directory(tmp_path):
    from qarm.config import load_config

    cfg = load_config(None)
    page, failed = build_report(cfg, RunDir(tmp_path / "empty"))
    assert not failed
    assert "No stage has finished in this run directory yet" in page
    assert "The prepare stage has not run in this run directory" in page


def test_all_text_is_escaped(fake_run):
    from qarm.config import load_config

    cfg = load_config(None, ["name=<script>alert(1)</script>", "report.title=Q&A <b>report</b>"])
    cfg, run = fake_run(stages=["prepare"], cfg=cfg)
    metrics = read_json(run / "metrics.json")
    metrics["prepare"]["skipped"]["<img src=x onerror=alert(2)>"] = 4
    from qarm.io import write_json

    write_json(run / "metrics.json", metrics)
    page, failed = build_report(cfg, RunDir(run))
    assert not failed
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>report" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<title>Q&amp;A &lt;b&gt;report&lt;/b&gt;</title>" in page


def test_a_corrupt_artifact_costs_only_its_section(fake_run):
    cfg, run = fake_run(stages=["prepare", "align", "quantize"])
    write_bytes(run / "codes.parquet", b"PAR1 this is not a parquet file")
    write_npy(run / "emb_aligned.npy", np.zeros((7, 4), dtype=np.float32))  # stale: 7 rows for 300 items
    page, failed = build_report(cfg, RunDir(run))
    assert failed == ["Codes: usage and collisions"]
    codes = page.split('<section id="codes">')[1].split("</section>")[0]
    assert 'class="error"' in codes and "could not be drawn" in codes
    align = page.split('<section id="alignment">')[1].split("</section>")[0]
    assert "emb_aligned.npy 7, but items.parquet has 300 items" in align
    assert 'alt="recall raw against aligned"' in align   # the figures from metrics.json still drawn
    assert 'alt="events per split and modality coverage"' in page


# Real runs through the shared pipeline_run cache: the rank tests have already run ml100k-fast through
# train and the align tests demo-fast through align, so here only the report itself is new work.
REAL_RUNS = {"ml100k-fast": ["prepare", "pairs", "align", "quantize", "train"],
             "demo-fast": ["prepare", "pairs", "align"]}
METRICS_KEY = {"prepare": "prepare", "pairs": "pairs", "align": "align", "quantize": "quantize", "train": "rank"}


@pytest.mark.parametrize("config", list(REAL_RUNS))
def test_report_of_a_real_run_renders_in_chromium(config, pipeline_run, chromium, tmp_path):
    stages = REAL_RUNS[config]
    run = pipeline_run(config, stages)
    metrics_before = read_json(run / "metrics.json")
    pipeline_run(config, stages + ["report"])
    m = read_json(run / "metrics.json")
    assert m == metrics_before, "the report stage must not write figures"
    page = (run / "report.html").read_text()
    assert 'class="error"' not in page
    for stage, key in METRICS_KEY.items():  # exactly the stages without figures say they have not run
        assert (f"The {stage} stage has not run" in page) == (key not in m), stage
    assert f'<div class="v">{m["prepare"]["n_items"]:,}</div><div class="k">n items</div>' in page
    assert f'<div class="v">{m["pairs"]["n_u2i"]:,}</div><div class="k">n u2i</div>' in page
    for alt in ("events per split and modality coverage", "U2I recall against popularity and pair quality",
                "recall raw against aligned", "PCA projection of raw and aligned embeddings",
                "cosine similarity of mined and random pairs"):
        assert f'alt="{alt}"' in page
    if config == "demo-fast":  # the synthetic world has ground truth: the projection shows business clusters
        assert "coloured by ground-truth business cluster" in page
    else:  # MovieLens: first genre; and the whole ablation
        assert "coloured by category (first genre)" in page
        for alt in ("RQ code usage per level", "ranking ablation AUC and GAUC", "cold-start AUC by variant",
                    "AUC per frequency bucket"):
            assert f'alt="{alt}"' in page
        assert "Task click" in page and "Headline results" in page
    images = _pngs(page)
    shot = tmp_path / "real.png"
    dom = render(chromium, run / "report.html", screenshot=shot, height=2000)
    assert f'data-images="{len(images)}"' in dom and 'data-broken-images="0"' in dom
    assert len(np.unique(np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3), axis=0)) > 200


def _documented(doc: str) -> dict[str, set[str]]:
    """Backticked names per '## `key`' section of docs/metrics.md."""
    out: dict[str, set[str]] = {}
    for block in doc.split("\n## `")[1:]:
        key, _, body = block.partition("`")
        names = set()
        for name in re.findall(r"`([^`]+)`", body):  # `a.{x,y}` names a.x and a.y
            m = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", name)
            names.update([m.group(1) + alt.strip() + m.group(3) for alt in m.group(2).split(",")] if m else [name])
        out[key] = names
    return out


def undocumented(metrics: dict, doc: str, tasks: list[str]) -> list[str]:
    """Keys of metrics.json that no docs/metrics.md row names (variant, task, bucket names generalised)."""
    from qarm.report.context import flatten

    names = _documented(doc)
    missing = []
    for stage, figures in metrics.items():
        for key, _ in flatten(figures):
            parts = key.split(".")
            if parts[0] in ("variants", "buckets") and len(parts) > 2:
                parts[1] = "<variant>"
                if parts[2] in tasks:
                    parts[2] = "<task>"
            if not any(".".join(parts[:i]) in names.get(stage, set()) for i in range(len(parts), 0, -1)):
                missing.append(f"{stage}: {key}")
    return missing


def test_metrics_doc_names_every_key_real_runs_write(pipeline_run):
    """docs/metrics.md documents every figure the stages really write (MovieLens and synthetic keys)."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for config, stages in REAL_RUNS.items():
        metrics = read_json(pipeline_run(config, stages) / "metrics.json")
        assert {METRICS_KEY[s] for s in stages} <= set(metrics)
        assert undocumented(metrics, doc, ["click", "like"]) == [], config
    # and the check bites: an undocumented key is found
    assert undocumented({"pairs": {"n_u2i": 1, "made_up": 2}}, doc, []) == ["pairs: made_up"]


def test_projection_colours_by_first_genre_without_ground_truth(fake_run):
    """MovieLens has no ground truth: the projection falls back to the first genre of items.parquet category."""
    from qarm.io import read_parquet
    from qarm.report.behaviour import _item_colours
    from qarm.report.context import ReportContext

    cfg, run = fake_run(stages=["prepare", "align"])
    (run / "data" / "ground_truth.parquet").unlink()
    labels, what = _item_colours(ReportContext.load(cfg, RunDir(run)), np.array([3, 6, 9], dtype=np.int64))
    assert what == "category (first genre)"
    cats = read_parquet(run / "items.parquet").set_index("item_id").loc[[3, 6, 9], "category"]
    assert list(labels) == [c.split(",")[0] for c in cats]
    page, failed = build_report(cfg, RunDir(run))
    assert not failed and "coloured by category (first genre)" in page
