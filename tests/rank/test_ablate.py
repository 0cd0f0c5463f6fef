"""``qarm ablate``: a trained ranker re-evaluated with one group of item features hidden."""

from __future__ import annotations

import json

import pytest
from rank_helpers import tiny_overrides

from qarm.cli import main
from qarm.config import load_config, load_run_config
from qarm.errors import QarmError, StageInputError
from qarm.rank.ablate import feature_ablation, seed_runs
from qarm.report.results import ablation_rows_table, ablation_runs_table, render_table
from qarm.rank.stage import run_train
from qarm.runner import RunDir

CONFIG = "movielens-100k"


def test_hiding_nothing_reproduces_the_stage_and_each_group_changes_the_scores(tiny_run):
    cfg = load_config(CONFIG, tiny_overrides("qarm_dense", 1))
    run_train(cfg, RunDir(tiny_run))
    rows = feature_ablation(cfg, tiny_run, "qarm_dense")
    stage = json.loads((tiny_run / "rank" / "qarm_dense" / "seed0" / "result.json").read_text())["tasks"]["click"]
    assert rows[0]["hidden"] == "nothing"
    # the same model, data and ops as the stage's own evaluation: the same AUCs
    assert rows[0]["test_auc"] == pytest.approx(stage["auc"], abs=1e-9)
    assert rows[0]["cold_test_auc"] == pytest.approx(stage["cold_auc"], abs=1e-9)
    groups = {r["hidden"]: r for r in rows[1:]}
    assert list(groups) == ["item id", "VQ bag", "RQ levels", "RQ prefixes", "all codes", "dense vector",
                            "id + all item features"]
    assert groups["dense vector"]["features"] == ["emb_aligned.npy"]
    assert set(groups["all codes"]["features"]) == set(groups["VQ bag"]["features"]) | set(
        groups["RQ levels"]["features"]) | set(groups["RQ prefixes"]["features"])
    for r in rows[1:]:     # every group is read by the trained model: hiding it moves the test scores
        assert r["test_auc"] != rows[0]["test_auc"] or r["test_mean_logit"] != rows[0]["test_mean_logit"], r["hidden"]
    # the tables are restored afterwards: a second call gives the same first row
    assert feature_ablation(cfg, tiny_run, "qarm_dense")[0] == rows[0]
    table = ablation_rows_table(rows, "qarm_dense").splitlines()
    assert table[0].startswith("| `qarm_dense`: hidden at evaluation | click test AUC |") and len(table) == 2 + len(rows)


def test_a_missing_model_is_a_clear_error(tiny_run):
    cfg = load_config(CONFIG, tiny_overrides("id", 1))
    with pytest.raises(StageInputError, match="rank/qarm/seed0/model.pt is missing"):
        feature_ablation(cfg, tiny_run, "qarm")


def test_the_command_reads_the_runs_config(tiny_run, capsys):
    cfg = load_config(CONFIG, tiny_overrides("id", 1) + ["align.tower_lr=2e-05"])
    (tiny_run / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_run_config(tiny_run).align.tower_lr == 2e-05     # JSON, not YAML: a float, not '2e-05'
    run_train(cfg, RunDir(tiny_run))
    assert main(["ablate", str(tiny_run), "--variant", "id", "--json", str(tiny_run / "ablate.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| nothing |") and out[3].startswith("| item id |")
    saved = json.loads((tiny_run / "ablate.json").read_text())
    assert [r["hidden"] for r in saved["runs"]["tiny"]] == ["nothing", "item id", "id + all item features"]
    # committed evidence: kind, command, config and commit, as tests/test_readme_results.py asks of a block
    assert saved["kind"] == "ablation" and saved["config"]["align"]["tower_lr"] == 2e-05
    assert saved["command"].startswith("qarm ablate ") and "git_commit" in saved
    assert main(["ablate", str(tiny_run / "nope"), "--variant", "id"]) == 2
    # a study directory: every seed<s>/ run, in seed order
    for s in (10, 2):
        (tiny_run.parent / "study" / f"seed{s}").mkdir(parents=True)
        (tiny_run.parent / "study" / f"seed{s}" / "config.json").write_text("{}")
    assert [p.name for p in seed_runs(tiny_run.parent / "study")] == ["seed2", "seed10"]


def _rows(test: float, cold: float, hidden_test: float, hidden_cold: float) -> list[dict]:
    return [{"hidden": "nothing", "features": [], "task": "click", "test_auc": test, "cold_test_auc": cold,
             "test_mean_logit": 0.0, "cold_test_mean_logit": 0.5},
            {"hidden": "all codes", "features": ["vq"], "task": "click", "test_auc": hidden_test,
             "cold_test_auc": hidden_cold, "test_mean_logit": 0.0, "cold_test_mean_logit": 1.5}]


def test_a_study_table_pairs_each_change_within_its_run():
    table = ablation_runs_table({"seed0": _rows(0.70, 0.60, 0.66, 0.62), "seed1": _rows(0.80, 0.64, 0.74, 0.63)},
                                  "qarm").splitlines()
    assert table[0] == "| `qarm`: hidden at evaluation (2 runs) | click test AUC Δ | click cold AUC Δ | cold mean logit |"
    assert table[2] == "| nothing (mean AUC) | 0.7500 | 0.6200 | +0.50 |"
    # test: -0.04 and -0.06; cold: +0.02 and -0.01 (one run of two where hiding raised it)
    assert table[3] == "| all codes | -0.0500 ± 0.0141 (0/2) | +0.0050 ± 0.0212 (1/2) | +1.50 |"
    # the same table from the --json file, as README / docs blocks render it
    runs = {"seed0": _rows(0.70, 0.60, 0.66, 0.62), "seed1": _rows(0.80, 0.64, 0.74, 0.63)}
    assert render_table({"kind": "ablation", "variant": "qarm", "runs": runs}, "ablate").splitlines() == table
    with pytest.raises(QarmError, match="not a 'qarm ablate --json' file"):
        render_table({"kind": "study"}, "ablate")
    with pytest.raises(StageInputError, match="neither a run directory"):
        seed_runs("/nonexistent")
