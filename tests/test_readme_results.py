"""The README's results tables are renders of committed JSON (docs/results/), never hand-typed.

Every block of README.md marked ``<!-- results: PATH table=NAME [task=T] -->`` ... ``<!-- /results -->``
must equal ``qarm results PATH --table NAME`` of the JSON it names. The mechanism itself is tested
on a small fake metrics dict, so it needs no pipeline run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qarm.cli import main
from qarm.errors import QarmError
from qarm.io import write_json
from qarm.report.results import BLOCK, render_all, render_blocks, render_table, update_readme
from qarm.study import load_results, summarize_study

ROOT = Path(__file__).resolve().parents[1]


# the documents whose results tables are rendered blocks (paths in a block are relative to its file)
RENDERED_DOCS = ("README.md", "docs/ranking-ablation.md", "docs/codes.md")


@pytest.mark.parametrize("doc", RENDERED_DOCS)
def test_readme_tables_match_their_committed_json(doc):
    readme = ROOT / doc
    text = readme.read_text()
    rendered, changed = render_blocks(text, readme.parent, where=doc)
    assert not changed, (f"{doc} results blocks differ from their JSON; regenerate them with "
                         f"`qarm results --readme {doc}`: {changed}")
    assert rendered == text
    assert BLOCK.search(text), f"{doc} is listed as rendered but has no results block"
    for m in BLOCK.finditer(text):
        path = m.group("spec").split()[0]
        data = load_results(readme.parent / path)
        assert data.get("git_commit") or data.get("exported_git_commit"), f"{path} names no git commit"
        assert data.get("config") or data.get("points"), f"{path} carries no config"


def _m(mean, std):
    return {"mean": mean, "std": std}


def fake_metrics(shift: float = 0.0) -> dict:
    def task(a):
        return {"auc": _m(a + shift, 0.003), "gauc": _m(a - 0.01 + shift, 0.004), "logloss": _m(0.62, 0.001),
                "cold_auc": _m(a - 0.1 + shift, 0.02),
                "warm_users": {"auc": _m(a + 0.02 + shift, 0.005), "gauc": _m(a + 0.01, 0.005)},
                "new_users": {"auc": _m(a - 0.01 + shift, 0.006), "gauc": _m(a - 0.02, 0.006)}}

    variants = {v: {"click": task(0.70 + 0.005 * i), "like": task(0.66 + 0.004 * i), "best_epoch": _m(2.0, 0.0)}
                for i, v in enumerate(["qarm_dense", "id", "vq", "frozen_mm"])}  # not in display order
    return {"kind": "run", "config": {"name": "fake", "rank": {"seeds": [0, 1, 2], "tasks": ["click", "like"]}},
            "exported_git_commit": "0" * 40,
            "rank": {"variants": variants, "n_test": 9097, "n_cold_test": 903, "n_test_warm_user_events": 1400,
                     "n_test_new_user_events": 7697,
                     "buckets": {v: {"click": {"100+": 0.71, "0": 0.65, "5-19": None, "1-4": 0.5}} for v in variants}},
            "pairs": {"n_u2i": 12166, "u2i_recall@10": 0.311},
            "align": {"raw.recall@10": 0.035, "aligned.recall@10": 0.092},
            "quantize": {"rq.collision_rate": 0.056, "rq.perplexity": [31.1, 30.4, 29.5]},
            "retrieve": {"popularity": {"recall@10": 0.08}, "aligned_codes": {"recall@10": _m(0.2, 0.01),
                                                                              "ndcg@10": _m(0.1, 0.01)},
                         "n_test_users": 300}}


def test_rank_table_layout_is_fixed():
    md = render_table(fake_metrics(), "rank")
    lines = md.splitlines()
    assert lines[0] == ("| variant | click AUC | click GAUC | click **cold AUC** | click warm-user AUC | "
                        "click warm-user GAUC | click new-user AUC | click new-user GAUC | like AUC | like cold AUC |")
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| `id`", "| `frozen_mm`", "| `vq`", "| `qarm_dense`"]
    assert lines[2].split(" | ")[1] == "0.7050 ± 0.0030"
    full = render_table(fake_metrics(), "rank", task="like")
    assert "like LogLoss" in full and "click" not in full
    buckets = render_table(fake_metrics(), "buckets").splitlines()
    assert buckets[0] == "| variant | 0 | 1-4 | 5-19 | 100+ |"
    assert buckets[2] == "| `id` | 0.650 | 0.500 | n/a | 0.710 |"
    stages = render_table(fake_metrics(), "stages")
    assert "| pairs | U2I pairs | 12,166 |" in stages and "| quantize | RQ perplexity per level | 31.1 / 30.4 / 29.5 |" in stages
    ret = render_table(fake_metrics(), "retrieve").splitlines()
    assert ret[0] == "| method | recall@10 | ndcg@10 |"
    assert ret[2:] == ["| `aligned_codes` | 0.2000 ± 0.0100 | 0.1000 ± 0.0100 |", "| `popularity` | 0.0800 | n/a |"]
    with pytest.raises(QarmError, match="unknown results table"):
        render_table(fake_metrics(), "nope")
    with pytest.raises(QarmError, match="no option"):
        render_table(fake_metrics(), "stages", task="click")


def test_study_tables_show_the_pipeline_seed_spread():
    runs = {s: {k: v for k, v in fake_metrics(0.01 * s).items() if k not in ("kind", "config")} for s in (0, 1, 2)}
    study = {**summarize_study(runs), "seeds": [0, 1, 2], "config": fake_metrics()["config"], "config_name": "fake"}
    md = render_table(study, "rank")
    assert md.splitlines()[2].split(" | ")[1] == "0.7150 ± 0.0100"  # id click AUC over pipeline seeds
    text = render_all(study)
    assert "mean ± std over pipeline seeds 0, 1, 2" in text and "ranker seeds 0, 1, 2" in text
    assert render_all(study) == text  # a pure function of the JSON


def test_readme_blocks_are_rewritten_and_checked(tmp_path, capsys):
    write_json(tmp_path / "docs" / "results" / "fake.json", fake_metrics())
    readme = tmp_path / "README.md"
    stale = "| variant | click AUC |\n|---|---|\n| `id` | 0.9999 |\n"
    readme.write_text("# x\n\nintro\n\n<!-- results: docs/results/fake.json table=rank -->\n" + stale
                      + "<!-- /results -->\n\ntext between\n\n"
                      "<!-- results: docs/results/fake.json table=buckets task=click -->\n<!-- /results -->\n")
    assert main(["results", "--readme", str(readme), "--check"]) == 1
    assert "differs: docs/results/fake.json table=rank" in capsys.readouterr().out
    assert stale in readme.read_text(), "--check changes nothing"
    assert main(["results", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert stale not in text and "text between" in text and text.startswith("# x\n\nintro\n")
    data = load_results(tmp_path / "docs" / "results" / "fake.json")
    assert render_table(data, "rank") + "\n" in text and render_table(data, "buckets") + "\n" in text
    assert update_readme(readme, check=True) == []
    capsys.readouterr()
    assert main(["results", "--readme", str(readme), "--check"]) == 0
    assert capsys.readouterr().out.endswith("every results block matches its JSON\n")
    # the evidence changes: the README no longer matches, and the check says which block
    write_json(tmp_path / "docs" / "results" / "fake.json", fake_metrics(0.001))
    assert update_readme(readme, check=True) == ["docs/results/fake.json table=rank"]
    # printed output equals the block body
    assert main(["results", str(tmp_path / "docs" / "results" / "fake.json"), "--table", "rank"]) == 0
    assert capsys.readouterr().out == render_table(fake_metrics(0.001), "rank") + "\n"


def test_readme_block_errors_name_the_problem(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: docs/results/missing.json table=rank -->\n<!-- /results -->\n")
    with pytest.raises(QarmError, match="missing.json, which does not exist"):
        update_readme(readme)
    readme.write_text("<!-- results: docs/results/missing.json -->\n<!-- /results -->\n")
    with pytest.raises(QarmError, match="no table="):
        update_readme(readme)
