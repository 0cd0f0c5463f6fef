"""The ``qarm`` command line: one subcommand per stage, plus run, demo, assign, serve.

Every command is a thin layer over the Python API; errors qarm raises on purpose are printed
as one clear line (exit code 2), never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from qarm.errors import QarmError
from qarm.runner import STAGES

DEMO_CONFIG = "demo"


def _add_run_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    if config_required:
        p.add_argument("config", help="experiment YAML file, or a built-in name (demo, movielens-100k)")
    p.add_argument("--out", required=True, type=Path, help="run directory (artifacts, manifest.json, metrics.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set data.path=/data/ml-1m")
    p.add_argument("--force", action="store_true", help="rerun stages even when config and inputs are unchanged")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qarm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for stage in STAGES:
        p = sub.add_parser(stage.name, help=f"run the {stage.name} stage",
                           description=f"Run the '{stage.name}' stage.\n\nReads: {stage.reads}.\nWrites: {stage.writes}.",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_run_args(p)

    p = sub.add_parser("run", help="run several stages in order, cached through the manifest",
                       description="Run the pipeline (prepare, pairs, align, quantize, train, report) in one run "
                                   "directory. Reads: the config's data. Writes: every stage's artifacts, "
                                   "manifest.json and metrics.json under --out. Stages whose config and inputs "
                                   "are unchanged are skipped.")
    _add_run_args(p)
    p.add_argument("--stages", default="", help="comma-separated subset, e.g. prepare,pairs")

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic world",
                       description="Run configs/demo.yaml (synthetic multi-modal world) end to end. "
                                   "Reads: nothing (the world is generated from the seed). "
                                   "Writes: a full run directory under --out, report.html included.")
    _add_run_args(p, config_required=False)

    p = sub.add_parser("assign", help="codes for new items against frozen codebooks",
                       description="Encode new items with the run's aligned encoder and assign VQ and RQ codes "
                                   "against the frozen pool and codebooks (no refitting). Reads: --run DIR "
                                   "(align/, quant/), --items (Parquet/CSV in the items schema). Writes: --out "
                                   "codes Parquet (item_id, vq, rq).")
    p.add_argument("--run", required=True, type=Path, help="a run directory with align and quantize done")
    p.add_argument("--items", required=True, type=Path, help="new items, Parquet or CSV in the items schema")
    p.add_argument("--out", required=True, type=Path, help="codes Parquet to write")

    p = sub.add_parser("serve", help="HTTP server: codes for new items, code lookup, ranking",
                       description="Serve a finished run over HTTP (FastAPI). Reads: --run DIR (encoder, "
                                   "codebooks, codes, ranker). Writes nothing.")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--codes", default="", help="codes store: sqlite:///PATH or redis://HOST:PORT/DB "
                                               "(default: the run's codes.parquet)")
    p.add_argument("--media-root", default="", help="folder that image_path/audio_path must lie inside")
    p.add_argument("--admin-port", type=int, default=None,
                   help="loopback-only admin listener (POST /admin/reload hot-swaps the run; SIGHUP too)")
    p.add_argument("--swap", action="store_true",
                   help="do not start a server: ask the one whose admin listener is on --admin-port to "
                        "hot-swap to --run, then exit")

    p = sub.add_parser("export-codes", help="write a run's codes into a key-value store",
                       description="Reads: --run DIR/codes.parquet. Writes: the codes into --to "
                                   "(sqlite:///PATH or redis://HOST:PORT/DB).")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--to", required=True)

    p = sub.add_parser("download", help="download a MovieLens archive from GroupLens, checksum verified",
                       description="Download and unpack a MovieLens archive (ml-100k, ml-1m, ml-latest-small, "
                                   "ml-latest, ml-20m, ml-25m, ml-32m). Writes: DEST/<name>/.")
    p.add_argument("name")
    p.add_argument("--to", required=True, type=Path)
    p.add_argument("--url", default=None, help="mirror base URL (default: GroupLens)")

    p = sub.add_parser("study", help="the pipeline once per pipeline seed; mean ± std over seeds",
                       description="Run the seed-dependent stages (default: all but report) once per pipeline "
                                   "seed in DIR/seed<s>/ (ordinary run directories: an interrupted study "
                                   "resumes), sharing the frozen tower features. Reads: the config's data. "
                                   "Writes: DIR/seed<s>/, DIR/shared/, DIR/study.json, DIR/study.md.")
    _add_run_args(p)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated pipeline seeds (default 0,1,2)")
    p.add_argument("--stages", default="", help="comma-separated subset (default: all but report)")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                   help="one study per combination of the values (repeatable) in DIR/<point>/; the stages "
                        "before the first one a grid key changes run once per seed and are shared. "
                        "Writes DIR/grid.json and DIR/grid.md as well")

    p = sub.add_parser("ablate", help="which item features a trained ranker's score draws on",
                       description="Evaluate a trained ranker again on the test and cold-test events with one "
                                   "group of item features hidden (ids and codes -> the OOV row, dense vectors "
                                   "-> 0), group by group; nothing is retrained. Reads: RUN/config.json, the "
                                   "run's events, items, codes, embeddings and rank/<variant>/seed<s>/model.pt. "
                                   "Writes: a Markdown table to stdout (--json: the rows as JSON too).")
    p.add_argument("run", type=Path, help="a run directory with the 'train' stage done, or a study directory "
                                          "(every seed<s>/ run; AUC changes paired per run, mean ± std)")
    p.add_argument("--variant", required=True, help="the trained variant, e.g. qarm")
    p.add_argument("--seed", type=int, default=None, help="ranker seed (default: the first configured)")
    p.add_argument("--task", default=None, help="label column (default: the first task)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")

    p = sub.add_parser("results", help="Markdown tables of a run or a study",
                       description="Print the tables of a run (DIR/metrics.json) or a study (DIR/study.json) "
                                   "as Markdown, or with --readme re-render the README blocks marked "
                                   "<!-- results: PATH table=NAME --> ... <!-- /results --> from their JSON. "
                                   "Reads: DIR or a JSON file. Writes: stdout (or the --readme file).")
    p.add_argument("path", nargs="?", type=Path, help="run or study directory, or its metrics.json / study.json")
    p.add_argument("--table", default="", help="print only this table: rank, buckets, stages, retrieve, grid, diff, "
                                                      "ablate (a qarm ablate --json file)")
    p.add_argument("--task", default=None, help="with --table rank, buckets, grid or diff: the task (label column)")
    p.add_argument("--against", default=None, help="with --table diff: the reference variant (default ia_rep, "
                                                    "else frozen_mm, else id, else the first); with --table "
                                                    "buckets: per-bucket differences against this variant")
    p.add_argument("--variants", default=None, help="with --table grid: comma-separated variants to show")
    p.add_argument("--stage", default=None, help="with --table grid: show every figure of this stage (pairs, align, "
                                                  "quantize) instead of the default three")
    p.add_argument("--export", type=Path, default=None,
                   help="also write the JSON, with config and git commit, to this file (e.g. docs/results/x.json)")
    p.add_argument("--readme", type=Path, default=None, help="re-render the marked results blocks of this file")
    p.add_argument("--check", action="store_true", help="with --readme: change nothing, exit 1 on any difference")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except QarmError as exc:
        print(f"qarm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qarm {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from qarm.config import load_config
    from qarm.runner import run_stages

    cmd = args.command
    if cmd in {s.name for s in STAGES} or cmd in ("run", "demo"):
        cfg = load_config(DEMO_CONFIG if cmd == "demo" else args.config, args.overrides)
        if cmd == "run":
            stages = [s.strip() for s in args.stages.split(",") if s.strip()] or None
        elif cmd == "demo":
            stages = None
        else:
            stages = [cmd]
        run_stages(cfg, args.out, stages=stages, force=args.force)
        report = args.out / "report.html"
        if report.exists():
            print(f"report: {report.resolve()}")
        return 0
    if cmd == "assign":
        from qarm.quant.assign import assign_items

        result = assign_items(args.run, args.items, args.out)
        print(f"assigned codes to {result['n_items']} items -> {args.out}")
        return 0
    if cmd == "serve":
        from qarm.serve.app import request_swap, serve

        if args.swap:
            if not args.admin_port:
                raise QarmError("--swap needs --admin-port (the running server's admin listener)")
            info = request_swap(args.run, args.admin_port)
            print(f"now serving {info['run']} (codebook version {info['version']}, was {info['previous_version']})")
            return 0
        serve(args.run, host=args.host, port=args.port, codes_store=args.codes, media_root=args.media_root,
              admin_port=args.admin_port)
        return 0
    if cmd == "export-codes":
        from qarm.serve.kv import export_codes

        n = export_codes(args.run, args.to)
        print(f"exported codes of {n} items -> {args.to}")
        return 0
    if cmd == "download":
        from qarm.data.download import download_movielens

        path = download_movielens(args.name, args.to, base_url=args.url)
        print(f"{args.name} -> {path}")
        return 0
    if cmd == "study":
        import shlex

        from qarm.study import grid_points, parse_grid, parse_seeds, run_grid, run_study

        cfg = load_config(args.config, args.overrides)
        stages = [s.strip() for s in args.stages.split(",") if s.strip()] or None
        command = shlex.join(["qarm", "study", args.config, "--seeds", args.seeds, "--out", str(args.out)]
                             + [f"--set={o}" for o in args.overrides] + [f"--grid={g}" for g in args.grid]
                             + (["--stages", args.stages] if args.stages else []) + (["--force"] if args.force else []))
        if args.grid:
            grid = parse_grid(args.grid)
            for sets in grid_points(grid):
                load_config(args.config, args.overrides + sets)  # a bad value fails now, not after hours
            run_grid(lambda sets: load_config(args.config, args.overrides + sets), args.out, parse_seeds(args.seeds),
                     grid, stages=stages, force=args.force, command=command)
            print(f"grid: {(args.out / 'grid.json').resolve()}")
            return 0
        run_study(cfg, args.out, parse_seeds(args.seeds), stages=stages, force=args.force, command=command)
        print(f"study: {(args.out / 'study.json').resolve()}")
        return 0
    if cmd == "ablate":
        import shlex

        from qarm.config import load_run_config
        from qarm.io import write_json
        from qarm.rank.ablate import seed_runs, study_ablation
        from qarm.report.results import ablation_runs_table
        from qarm.study import git_commit

        per_run = study_ablation(args.run, args.variant, args.seed, args.task)
        if args.json is not None:
            command = ["qarm", "ablate", str(args.run), "--variant", args.variant]
            command += (["--seed", str(args.seed)] if args.seed is not None else []) + (
                ["--task", args.task] if args.task else []) + ["--json", str(args.json)]
            write_json(args.json, {"kind": "ablation", "path": str(args.run), "variant": args.variant,
                                   "seed": args.seed, "task": args.task, "command": shlex.join(command),
                                   **git_commit(), "config": load_run_config(seed_runs(args.run)[0]).to_dict(),
                                   "runs": per_run})
        sys.stdout.write(ablation_runs_table(per_run, args.variant) + "\n")
        return 0
    if cmd == "results":
        return _results(args)
    raise QarmError(f"unknown command {cmd}")


def _results(args: argparse.Namespace) -> int:
    from qarm.report.results import render_all, render_table, update_readme
    from qarm.study import export_results, load_results

    if args.readme is not None:
        changed = update_readme(args.readme, check=args.check)
        for block in changed:
            print(f"{args.readme}: {'differs' if args.check else 'rewrote'}: {block}")
        if not changed:
            print(f"{args.readme}: every results block matches its JSON")
        return 1 if (changed and args.check) else 0
    if args.path is None:
        raise QarmError("give a run or study directory (or JSON file), or --readme FILE")
    data = load_results(args.path)
    if args.export is not None:
        export_results(args.path, args.export)
    if args.table:
        options = {k: v for k, v in (("task", args.task), ("variants", args.variants), ("stage", args.stage),
                                                    ("against", args.against)) if v}
        sys.stdout.write(render_table(data, args.table, **options) + "\n")
    else:
        sys.stdout.write(render_all(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
