"""Catalogue-scale benchmark: the pipeline on synthetic worlds of growing size, stage by stage.

For each size (items x events) a synthetic world with ``content: embeddings`` (256-d item vectors in
one .npy, no per-item PNG/WAV) goes through prepare, pairs, align (head mode on the given item
embeddings: ``align.item_embeddings``), quantize (IVF VQ search, RQ-Kmeans) and train (one seed,
variants ``id`` and ``qarm``, one epoch). Every stage runs as its own ``qarm run --stages STAGE``
process, so its peak RSS is that process's own (``os.wait4`` rusage ``ru_maxrss``: the process and
the children it waited for). ``seconds`` is the stage's own wall time from the run's manifest (what
the stage computed, without interpreter start and imports); the process wall time is printed beside it.

Growth exponent of a stage = slope of log seconds against log events between the two largest sizes
(1.0 = linear in the event count); the same slope against items is printed beside it. The JSON is
rewritten after every size, and a stage that fails (killed for memory, say) is recorded under
"failed" with its peak RSS while the sizes before it keep their figures. Goals (issue 14): every exponent <= 1.15, peak RSS of every stage
at the largest size <= 12 GiB, ranker train samples/s at the largest size >= 0.7x the smallest's.

    python benchmarks/bench_scale.py --json OUT.json                       # 10k/1M, 100k/5M, 1M/20M
    python benchmarks/bench_scale.py --sizes 10000x1000000 --json OUT.json # the smallest size only
    python benchmarks/bench_scale.py --work DIR --keep --json OUT.json --resume  # go on where a stopped run left off

``--json OUT`` writes {"sizes": [{"n_items", "n_events"}, ..], "stages": {stage: {"seconds": [..],
"peak_rss_gib": [..]}}, "growth_exponent": {stage: ..}, "rank_train_samples_per_s": [..]} (plus
"growth_exponent_items", "n_users", "process_seconds", "load_average", "config_overrides" and,
where a stage failed, "failed" beside them).

At catalogue scale pass the O(batch) optimizers: ``--set pairs.u2i_sparse=true --set rank.sparse_ids=true``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ["prepare", "pairs", "align", "quantize", "train"]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"10000x1000000,100000x5000000" -> [(10000, 1000000), (100000, 5000000)] (items x events)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        items, events = part.lower().split("x")
        out.append((int(float(items)), int(float(events))))
    if not out:
        raise SystemExit("--sizes: give at least one ITEMSxEVENTS size")
    return out


def overrides(n_items: int, n_events: int, n_users: int, run: Path, args) -> list[str]:
    """The ``--set`` overrides of one size: the synthetic world, BYO embeddings, the reduced training."""
    media = run.resolve() / "data" / "media"
    sets = {
        "data.synthetic.n_items": n_items, "data.synthetic.n_events": n_events, "data.synthetic.n_users": n_users,
        "data.synthetic.content": "embeddings", "data.synthetic.embedding_dim": args.dim,
        "data.synthetic.with_audio": "false",
        "pairs.u2i_epochs": args.u2i_epochs,
        "align.mode": "head", "align.epochs": args.align_epochs,
        "align.item_embeddings": media / "item_embeddings.npy",
        "align.item_embedding_ids": media / "item_embedding_ids.npy",
        "quantize.vq_index": "ivf",
        "rank.seeds": "[0]", "rank.variants": "[id,qarm]", "rank.epochs": 1,
    }
    return [f"{k}={v}" for k, v in sets.items()] + list(args.set)


def run_stage(stage: str, run: Path, sets: list[str], config: str, log: Path) -> tuple[float, float, int]:
    """Run one stage in its own process -> (process wall seconds, peak RSS GiB, exit status)."""
    cmd = [sys.executable, "-m", "qarm", "run", config, "--out", str(run), "--stages", stage]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 2**20, proc.returncode  # ru_maxrss is in KiB on Linux


def growth_exponent(events: list[int], seconds: list[float | None]) -> float | None:
    """Slope of log seconds against log events between the two largest sizes that have a figure
    (a size stopped before this stage has None)."""
    kept = [(e, t) for e, t in zip(events, seconds) if t is not None]
    events, seconds = [e for e, _ in kept], [t for _, t in kept]
    if len(events) < 2:
        return None
    order = sorted(range(len(events)), key=lambda i: events[i])
    a, b = order[-2], order[-1]
    if events[a] == events[b] or seconds[a] <= 0 or seconds[b] <= 0:
        return None
    return math.log(seconds[b] / seconds[a]) / math.log(events[b] / events[a])


def finish(result: dict) -> None:
    """Growth exponents of the sizes measured so far: against events (the issue's figure) and
    against items (a stage whose work is O(items), quantize say, shows ~1.0 there and ~1.4 against
    events when items grow 10x and events 5x)."""
    events = [s["n_events"] for s in result["sizes"]]
    items = [s["n_items"] for s in result["sizes"]]
    result["growth_exponent_items"] = {}
    for stage in STAGES:
        g = growth_exponent(events, result["stages"][stage]["seconds"])
        result["growth_exponent"][stage] = None if g is None else round(g, 3)
        g = growth_exponent(items, result["stages"][stage]["seconds"])
        result["growth_exponent_items"][stage] = None if g is None else round(g, 3)
    result["load_average"]["end"] = list(os.getloadavg())


def report(result: dict) -> None:
    """Print the Markdown table of ``result`` and the goals."""
    def fmt(g):
        return "-" if g is None else f"{g:.2f}"
    print("\n| stage | " + " | ".join(f"{s['n_items']:,} x {s['n_events']:,}{' (stopped)' if s.get('partial') else ''}"
                                      for s in result["sizes"])
          + " | growth exponent (events) | (items) |")
    print("|---|" + "---|" * len(result["sizes"]) + "---|---|")
    for stage in STAGES:
        cells = ["not run" if t is None else f"{t:.1f} s, {r:.2f} GiB"
                 for t, r in zip(result["stages"][stage]["seconds"], result["stages"][stage]["peak_rss_gib"])]
        print(f"| {stage} | " + " | ".join(cells)
              + f" | {fmt(result['growth_exponent'][stage])} | {fmt(result['growth_exponent_items'][stage])} |")
    sps = result["rank_train_samples_per_s"]
    print("| ranker train samples/s | " + " | ".join("-" if v is None else f"{v:,.0f}" for v in sps) + " | | |")
    for f in result.get("failed", []):
        print(f"FAILED at {f['n_items']:,} x {f['n_events']:,}: stage {f['stage']} exit {f['exit']} after "
              f"{f['process_seconds']:.0f} s, peak RSS {f['peak_rss_gib']:.2f} GiB (exit -9: killed, most often out of memory)")
    goals = []
    gs = [g for g in result["growth_exponent"].values() if g is not None]
    if gs:
        goals.append(f"max growth exponent {max(gs):.2f} (goal <= 1.15)")
    if result["sizes"]:
        last = [result["stages"][s]["peak_rss_gib"][-1] for s in STAGES]
        goals.append(f"max peak RSS at the largest size measured {max(r for r in last if r is not None):.2f}"
                     " GiB (goal <= 12 at 1M x 20M)")
    rates = [v for v in sps if v is not None]
    if len(rates) > 1:
        goals.append(f"ranker samples/s largest / smallest {rates[-1] / rates[0]:.2f} (goal >= 0.7)")
    print("; ".join(goals))
    le = result["load_average"]["end"]
    print(f"load average at end: {le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f}")


def merge(paths: list[Path]) -> dict:
    """One result from several ``--json`` files (say the small sizes from one invocation, the
    largest from another): sizes concatenated in the given order, exponents recomputed. Where the
    files' ``config_overrides`` differ, that is an error: only like runs may be merged."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    sets = {tuple(r.get("config_overrides", [])) for r in parts}
    if len(sets) > 1:
        raise SystemExit(f"--merge: the files ran with different overrides: {sorted(sets)}")
    out: dict = {"sizes": [], "stages": {s: {"seconds": [], "peak_rss_gib": []} for s in STAGES},
                 "growth_exponent": {}, "rank_train_samples_per_s": [], "n_users": [],
                 "process_seconds": {s: [] for s in STAGES}, "config_overrides": list(next(iter(sets))),
                 "load_average": {"start": parts[0]["load_average"]["start"]}, "merged_from": [str(p) for p in paths]}
    for r in parts:
        if "in_progress" in r:
            # a size stopped part-way (out of time, say): its finished stages, "not run" for the rest
            ip = r["in_progress"]
            r = {**r, "sizes": r["sizes"] + [{"n_items": ip["n_items"], "n_events": ip["n_events"], "partial": True}],
                 "rank_train_samples_per_s": r["rank_train_samples_per_s"] + [None],
                 "n_users": r["n_users"] + [None],
                 "stages": {st: {k: r["stages"][st][k][:len(r["sizes"])] + [ip["stages"].get(st, {}).get(k)]
                                 for k in ("seconds", "peak_rss_gib")} for st in STAGES},
                 "process_seconds": {st: r["process_seconds"][st][:len(r["sizes"])] + [None] for st in STAGES}}
        out["sizes"] += r["sizes"]
        out["rank_train_samples_per_s"] += r["rank_train_samples_per_s"]
        out["n_users"] += r["n_users"]
        for st in STAGES:
            for key in ("seconds", "peak_rss_gib"):
                out["stages"][st][key] += r["stages"][st][key]
            out["process_seconds"][st] += r["process_seconds"][st]
        out.setdefault("failed", []).extend(r.get("failed", []))
    # a failure that a later file measured successfully (after a fix, say) is not a failure of the merge
    done = {(s["n_items"], s["n_events"]) for s in out["sizes"]}
    out["failed"] = [f for f in out["failed"] if (f["n_items"], f["n_events"]) not in done]
    if not out["failed"]:
        del out["failed"]
    finish(out)
    return out


def write_result(result: dict, path: Path | None) -> None:
    """Write the figures atomically (temp file + rename), when ``--json`` was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000x1000000,100000x5000000,1000000x20000000",
                   help="comma-separated ITEMSxEVENTS sizes (default: %(default)s)")
    p.add_argument("--events-per-user", type=int, default=20, help="n_users = n_events / this (default 20)")
    p.add_argument("--dim", type=int, default=256, help="dimension of the given item embeddings")
    p.add_argument("--u2i-epochs", type=int, default=1)
    p.add_argument("--align-epochs", type=int, default=1)
    p.add_argument("--config", default="demo", help="base config (built-in name or YAML)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="extra overrides")
    p.add_argument("--work", type=Path, default=None, help="folder for the run directories (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--resume", action="store_true",
                   help="with --work, --keep and --json: keep the sizes OUT.json already has and, for the size in "
                        "progress, its run directory and measured stages; run only the stages after them")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="run nothing: print (and with --json write) the table of these result files together")
    args = p.parse_args()
    if args.merge:
        result = merge(args.merge)
        report(result)
        write_result(result, args.json)
        return
    sizes = parse_sizes(args.sizes)
    work = args.work or Path(tempfile.mkdtemp(prefix="qarm-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    print(f"cores: {os.cpu_count()}; load average at start: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}"
          f"{'' if load0[1] <= 0.5 * (os.cpu_count() or 1) else ' (NOT quiet: other work is running)'}", flush=True)
    print(f"work folder: {work}", flush=True)
    result: dict = {"sizes": [], "stages": {s: {"seconds": [], "peak_rss_gib": []} for s in STAGES},
                    "growth_exponent": {}, "rank_train_samples_per_s": [], "n_users": [],
                    "process_seconds": {s: [] for s in STAGES}, "load_average": {"start": list(load0)}}
    if args.resume:
        if not (args.work and args.keep and args.json and args.json.exists()):
            raise SystemExit("--resume needs --work DIR, --keep and an existing --json OUT.json from the stopped run")
        result = json.loads(args.json.read_text())
        result.setdefault("resumed", []).append({"load_average_start": list(load0)})
    for n_items, n_events in sizes:
        n_users = max(1000, n_events // args.events_per_user)
        run = work / f"run-{n_items}x{n_events}"
        if any(s == {"n_items": n_items, "n_events": n_events} for s in result["sizes"]):
            print(f"\n=== {n_items:,} x {n_events:,}: measured in {args.json}, kept ===", flush=True)
            continue
        done: list[str] = []
        ip = result.get("in_progress")
        if args.resume and ip and (ip["n_items"], ip["n_events"]) == (n_items, n_events) and run.exists():
            # the stages this size finished before the stop keep their figures and their outputs
            done = [st for st in STAGES if st in ip["stages"]]
            print(f"resuming {run} after {', '.join(done)}", flush=True)
        else:
            result.pop("in_progress", None)
            if run.exists():
                shutil.rmtree(run)
            run.mkdir(parents=True)
        sets = overrides(n_items, n_events, n_users, run, args)
        kept = [s for s in sets if "item_embedding" not in s and "n_" not in s]
        if args.resume and result.get("config_overrides", kept) != kept:
            raise SystemExit(f"--resume: {args.json} ran with {result['config_overrides']}, this call gives {kept}")
        result["config_overrides"] = kept
        print(f"\n=== {n_items:,} items, {n_events:,} events, {n_users:,} users -> {run} ===", flush=True)
        log = run / "bench.log"
        failed = None
        for stage in STAGES:
            if stage in done:
                continue
            wall, rss, rc = run_stage(stage, run, sets, args.config, log)
            if rc != 0:
                # keep what the smaller sizes measured: record the failure (exit status -9 = killed,
                # out of memory most often) with the stage's peak RSS and stop this size
                tail = log.read_text(errors="replace")[-3000:]
                print(f"  {stage:9s} FAILED (exit {rc}) after {wall:.1f} s, peak RSS {rss:.2f} GiB; log {log}:\n{tail}",
                      flush=True)
                failed = {"n_items": n_items, "n_events": n_events, "stage": stage, "exit": rc,
                          "process_seconds": round(wall, 2), "peak_rss_gib": round(rss, 3)}
                break
            manifest = json.loads((run / "manifest.json").read_text())
            seconds = float(manifest["stages"][stage]["wall_s"])
            result["stages"][stage]["seconds"].append(round(seconds, 2))
            result["stages"][stage]["peak_rss_gib"].append(round(rss, 3))
            result["process_seconds"][stage].append(round(wall, 2))
            print(f"  {stage:9s} {seconds:9.1f} s (process {wall:7.1f} s)  peak RSS {rss:6.2f} GiB", flush=True)
            # the size in progress, stage by stage: a run stopped mid-size still shows what it measured
            result["in_progress"] = {"n_items": n_items, "n_events": n_events,
                                     "stages": {st: {"seconds": result["stages"][st]["seconds"][-1],
                                                     "peak_rss_gib": result["stages"][st]["peak_rss_gib"][-1]}
                                                for st in STAGES[:STAGES.index(stage) + 1]}}
            write_result(result, args.json)
        result.pop("in_progress", None)
        if failed is not None:
            # drop the partial size's stage figures so every list stays aligned with "sizes"
            for stage in STAGES:
                for key in ("seconds", "peak_rss_gib"):
                    del result["stages"][stage][key][len(result["sizes"]):]
                del result["process_seconds"][stage][len(result["sizes"]):]
            result.setdefault("failed", []).append(failed)
            write_result(result, args.json)
            break
        metrics = json.loads((run / "metrics.json").read_text())
        sps = float(metrics["rank"]["throughput"]["train_samples_per_s"])
        result["rank_train_samples_per_s"].append(round(sps, 1))
        result["sizes"].append({"n_items": n_items, "n_events": n_events})
        result["n_users"].append(n_users)
        print(f"  ranker train samples/s: {sps:,.0f}", flush=True)
        finish(result)
        write_result(result, args.json)   # after every size: a later size that fails keeps these
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    finish(result)
    report(result)
    write_result(result, args.json)
    if args.json:
        print(f"wrote {args.json}")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
