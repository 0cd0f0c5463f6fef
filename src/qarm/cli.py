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
        from qarm.serve.app import serve

        serve(args.run, host=args.host, port=args.port, codes_store=args.codes, media_root=args.media_root)
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
    raise QarmError(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
