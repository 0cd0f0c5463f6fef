"""Pipeline-seed studies: the whole pipeline once per pipeline seed, figures as mean ± std over seeds.

``qarm study CONFIG --seeds 0,1,2 --out DIR`` runs the seed-dependent stages (prepare's item
hold-out draw, pairs, align, quantize, train, and retrieve where it exists) once per seed with
``cfg.seed = s`` in ``DIR/seed<s>/``: each is an ordinary run directory, cached by its manifest,
so an interrupted study resumes where it stopped. The ranker's own seeds (``rank.seeds``) run
inside every seed directory as usual.

What is shared between the seeds: the frozen pretrained tower features of the align stage
(``align/cache/*.npz``). They are a function of the tower spec and the items' content only (the
cache file's name is a hash of both), never of the seed, so the first seed that computes one
publishes it to ``DIR/shared/align-cache/`` and every other seed hard-links it (a copy where the
file system has no hard links). Nothing else is shared: with a synthetic source the world itself
is drawn from the seed, so its content (and therefore its features) differ per seed and nothing
is reused; on MovieLens the content is the same for every seed and the features are computed
once.

``DIR/study.json`` holds, under ``variants``, the layout of ``metrics.json``'s ``rank.variants``
where every ``{mean, std}`` leaf (over ranker seeds) becomes ``{mean, std, values, ranker_std}``:
``values`` are the per-pipeline-seed means (ranker seeds averaged inside), ``mean`` and ``std``
(sample standard deviation, 0 with one seed) are over those, ``ranker_std`` the per-seed ranker
spread. ``buckets`` and the numeric figures of ``prepare``, ``pairs``, ``align``, ``quantize``,
``retrieve`` and the other ``rank`` keys get ``{mean, std, values}`` the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qarm import __version__
from qarm.config import Config
from qarm.errors import ConfigError, QarmError
from qarm.io import read_json, write_bytes, write_json
from qarm.runner import STAGE_BY_NAME, STAGES, run_stages

STUDY_FILE = "study.json"
STUDY_MARKDOWN = "study.md"
GRID_FILE = "grid.json"
GRID_MARKDOWN = "grid.md"
SHARED_CACHE = Path("shared") / "align-cache"
SEED_SECTIONS = ("prepare", "pairs", "align", "quantize", "retrieve")
# per-epoch curves are not a figure one averages over seeds
SKIP_KEYS = frozenset({"loss_history", "log"})


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; distinct non-negative integers, order kept."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            s = int(part)
        except ValueError:
            raise ConfigError(f"--seeds: {part!r} is not an integer (expected e.g. 0,1,2)") from None
        if s < 0:
            raise ConfigError(f"--seeds: seeds must be >= 0, got {s}")
        if s in seeds:
            raise ConfigError(f"--seeds: seed {s} is given twice")
        seeds.append(s)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. 0,1,2")
    return seeds


def default_stages() -> list[str]:
    """Every stage but ``report`` (one HTML report per seed is not a study figure)."""
    return [s.name for s in STAGES if s.name != "report"]


def git_commit(where: Path | None = None) -> dict[str, Any]:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the checkout holding qarm."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": sha or None, "git_dirty": dirty}


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Put ``src`` at ``dst`` (hard link, else copy through a temp file); False when ``dst`` exists."""
    if dst.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def share_cache(src_dir: Path, dst_dir: Path) -> int:
    """Link every finished cache file (``*.npz``, temp files excluded) of ``src_dir`` into ``dst_dir``.

    Safe because cache files are immutable: the align stage writes one only when it is absent, and
    always through an atomic rename (a new inode), never in place. Returns the number linked."""
    if not src_dir.is_dir():
        return 0
    return sum(_link_or_copy(p, dst_dir / p.name) for p in sorted(src_dir.glob("*.npz"))
               if not p.name.startswith("."))


def seed_config(cfg: Config, seed: int) -> Config:
    """``cfg`` with the pipeline seed replaced (sections shared, they are not modified)."""
    return dataclasses.replace(cfg, seed=int(seed))


def run_study(cfg: Config, out: str | Path, seeds: Sequence[int], stages: Sequence[str] | None = None,
              force: bool = False, command: str | None = None, log: Callable[[str], None] = print,
              before_seed: Callable[[int, Path], None] | None = None,
              figures_of: Sequence[str] | None = None) -> dict[str, Any]:
    """Run ``stages`` (default: all but report) once per pipeline seed in ``out/seed<s>/``; write
    ``out/study.json`` and ``out/study.md``. Returns the study dict. ``before_seed(s, seed_dir)``
    runs before each seed's stages (a grid links the stages its points share there); ``figures_of``:
    the stages whose figures the study summarises (default ``stages``)."""
    out = Path(out)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"study seeds must be distinct and non-empty, got {seeds}")
    names = list(stages) if stages else default_stages()
    shared = out / SHARED_CACHE
    runs: dict[int, dict[str, Any]] = {}
    for s in seeds:
        seed_dir = out / f"seed{s}"
        cache = seed_dir / "align" / "cache"
        n_in = share_cache(shared, cache)
        log(f"[study] pipeline seed {s} -> {seed_dir}" + (f" ({n_in} shared tower-feature files linked)" if n_in else ""))
        if before_seed is not None:
            before_seed(s, seed_dir)
        metrics = run_stages(seed_config(cfg, s), seed_dir, stages=names, force=force,
                             log=lambda m, s=s: log(f"[seed {s}] {m}"))
        # only the figures of the stages this study ran (a seed directory may hold others, from an
        # earlier run with another config: they are not this study's)
        keep = {STAGE_BY_NAME[n].metrics_key for n in (figures_of or names)}
        runs[s] = {k: v for k, v in metrics.items() if k in keep}
        share_cache(cache, shared)
    study = summarize_study(runs)
    study.update({"seeds": seeds, "config": cfg.to_dict(), "config_name": cfg.name, "stages": names,
                  "qarm_version": __version__, "command": command or "", **git_commit(),
                  "shared": ["align/cache (frozen tower features, keyed by tower spec and item content)"]})
    write_json(out / STUDY_FILE, study)
    from qarm.report.results import render_all

    write_bytes(out / STUDY_MARKDOWN, render_all(read_json(out / STUDY_FILE)).encode())
    log(f"[study] {len(seeds)} pipeline seeds -> {out / STUDY_FILE}, {out / STUDY_MARKDOWN}")
    return study


# ----------------------------------------------------------------------------------------------
# grids: one study per combination of override values, the stages they do not touch run once


def parse_grid(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["align.content_weight=0,0.3", "rank.variants=[qarm,id],[qarm]"]`` ->
    ``[("align.content_weight", ["0", "0.3"]), ("rank.variants", ["[qarm,id]", "[qarm]"])]``.

    Values are split at commas outside brackets, so list values keep theirs. A key must be a
    ``section.key`` that ``--set`` accepts; it may appear once."""
    out: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, text = str(spec).partition("=")
        key = key.strip()
        if not sep or "." not in key or not text.strip():
            raise ConfigError(f"--grid {spec!r}: expected SECTION.KEY=V1,V2,... (e.g. align.content_weight=0,0.3)")
        values, depth, cur = [], 0, ""
        for ch in text:
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                values.append(cur.strip())
                cur = ""
            else:
                cur += ch
        values.append(cur.strip())
        if any(not v for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"--grid {spec!r}: values must be non-empty and distinct, got {values}")
        if key in {k for k, _ in out}:
            raise ConfigError(f"--grid: {key} is given twice")
        out.append((key, values))
    if not out:
        raise ConfigError("--grid: give at least one SECTION.KEY=V1,V2,...")
    return out


def grid_points(grid: Sequence[tuple[str, Sequence[str]]]) -> list[list[str]]:
    """Every combination as ``--set`` overrides, the first key varying slowest."""
    points: list[list[str]] = [[]]
    for key, values in grid:
        points = [p + [f"{key}={v}"] for p in points for v in values]
    return points


def point_name(sets: Sequence[str]) -> str:
    """Directory name of a grid point: ``align.content_weight=0.3+align.temperature=0.2``."""
    return "+".join(sets).translate(str.maketrans({c: "_" for c in '/\\:*?"<>| []{}'}))


def shared_stages(grid: Sequence[tuple[str, Sequence[str]]], names: Sequence[str]) -> list[str]:
    """The stages of ``names`` before the first one whose config sections a grid key changes: their
    outputs are the same at every point, so they run once (at the first point) per seed."""
    sections = {key.split(".", 1)[0] for key, _ in grid}
    shared = []
    for stage in STAGES:
        if stage.name not in names:
            continue
        if sections & set(stage.sections):
            break
        shared.append(stage.name)
    return shared


def link_stage_outputs(src_dir: Path, dst_dir: Path, stages: Sequence[str]) -> int:
    """Hard-link the outputs of ``stages`` (files, and the files under output folders) of run
    ``src_dir`` into run ``dst_dir``, with their manifest entries and metrics, so the runner sees
    them as up to date. Safe for the same reason as ``share_cache``: every stage writes through an
    atomic rename (a new inode), never into an existing file. Returns the number of files linked."""
    if not (src_dir / "manifest.json").is_file():
        return 0
    n = 0
    for name in stages:
        for output in STAGE_BY_NAME[name].outputs:
            src = src_dir / output
            files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file()) if src.is_dir() else []
            for f in files:
                if f.name.startswith("."):  # temp files of a killed write are never shared
                    continue
                dst = dst_dir / f.relative_to(src_dir)
                if dst.exists() and not os.path.samefile(f, dst):
                    dst.unlink()  # the first point reran this stage (--force): take its new output
                n += _link_or_copy(f, dst)
    src_manifest = read_json(src_dir / "manifest.json")
    manifest = read_json(dst_dir / "manifest.json") if (dst_dir / "manifest.json").is_file() else {"stages": {}}
    metrics = read_json(dst_dir / "metrics.json") if (dst_dir / "metrics.json").is_file() else {}
    src_metrics = read_json(src_dir / "metrics.json") if (src_dir / "metrics.json").is_file() else {}
    for name in stages:
        if name in src_manifest.get("stages", {}):
            manifest["stages"][name] = src_manifest["stages"][name]
        key = STAGE_BY_NAME[name].metrics_key
        if key in src_metrics:
            metrics[key] = src_metrics[key]
    dst_dir.mkdir(parents=True, exist_ok=True)
    write_json(dst_dir / "manifest.json", manifest)
    write_json(dst_dir / "metrics.json", metrics)
    return n


def link_variant_runs(src_dir: Path, dst_dir: Path) -> int:
    """Hard-link the per-(variant, seed) ranker runs of ``src_dir`` (``rank/<variant>/seed<k>/``)
    into ``dst_dir`` where it has none. The train stage reuses a linked run only when its
    fingerprint (the rank fields that variant reads, the seeds, the inputs) matches this point's,
    so a sweep over a code knob trains ``ia_rep`` once; any other linked run is retrained, through
    atomic renames that never touch the first point's files. Returns the number of files linked."""
    n = 0
    for f in sorted((src_dir / "rank").glob("*/seed*/*")):
        dst = dst_dir / f.relative_to(src_dir)
        if f.is_file() and not f.name.startswith(".") and not dst.exists():
            n += _link_or_copy(f, dst)
    return n


def run_grid(make_config: Callable[[list[str]], Config], out: str | Path, seeds: Sequence[int],
             grid: Sequence[tuple[str, Sequence[str]]], stages: Sequence[str] | None = None, force: bool = False,
             command: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One study per grid point in ``out/<point>/`` (``make_config(point overrides)`` gives its
    config); the stages no grid key touches run at the first point only and are linked into the
    others, and so are the frozen tower features (``share_cache``) and the first point's ranker
    runs (``link_variant_runs``: reused where the variant's fingerprint is unchanged). Writes ``out/grid.json`` (``kind: grid``, each point's overrides and study) and
    ``out/grid.md``. Returns the grid dict."""
    out = Path(out)
    names = list(stages) if stages else default_stages()
    shared = shared_stages(grid, names)
    points = grid_points(grid)
    first = out / point_name(points[0])
    log(f"[grid] {len(points)} points x {len(seeds)} pipeline seeds; run once per seed and shared: "
        f"{', '.join(shared) or 'nothing'}")
    results = []
    for i, sets in enumerate(points):
        where = out / point_name(sets)
        log(f"[grid] point {i + 1}/{len(points)}: {' '.join(sets)} -> {where}")

        if i:  # the frozen tower features do not depend on any grid value either
            share_cache(first / SHARED_CACHE, where / SHARED_CACHE)

        def link(s: int, seed_dir: Path, i: int = i) -> None:
            if i and shared:
                link_stage_outputs(first / f"seed{s}", seed_dir, shared)
            if i and "train" in names and "train" not in shared:
                link_variant_runs(first / f"seed{s}", seed_dir)

        # later points run only their own stages: the shared ones are linked in, never rerun
        study = run_study(make_config(sets), where, seeds, stages=[n for n in names if not i or n not in shared],
                          force=force, command=command, log=log, before_seed=link, figures_of=names)
        results.append({"overrides": dict(s.split("=", 1) for s in sets), "dir": where.name, "study": study})
    data = {"kind": "grid", "grid": [{"key": k, "values": list(v)} for k, v in grid], "seeds": [int(s) for s in seeds],
            "stages": names, "shared_stages": shared, "points": results, "command": command or "",
            "qarm_version": __version__, **git_commit()}
    write_json(out / GRID_FILE, data)
    from qarm.report.results import render_all

    write_bytes(out / GRID_MARKDOWN, render_all(read_json(out / GRID_FILE)).encode())
    log(f"[grid] {len(points)} points -> {out / GRID_FILE}, {out / GRID_MARKDOWN}")
    return data


# ----------------------------------------------------------------------------------------------
# aggregation over pipeline seeds


def _number(v: Any) -> float | None:
    """A finite float, or None (JSON null, NaN, non-numbers and booleans)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _is_leaf(v: Any) -> bool:
    return isinstance(v, Mapping) and "mean" in v and "std" in v and not isinstance(v["mean"], Mapping)


def _spread(values: list[float | None]) -> dict[str, Any]:
    ok = np.array([v for v in values if v is not None], np.float64)
    mean = float(ok.mean()) if len(ok) else None
    std = (float(ok.std(ddof=1)) if len(ok) > 1 else 0.0) if len(ok) else None
    return {"mean": mean, "std": std, "values": list(values)}


def _spread_lists(lists: list[Any]) -> dict[str, Any] | None:
    """Element-wise spread of equal-length numeric lists (per-level figures); None otherwise."""
    present = [v for v in lists if v is not None]
    if not present or any(not isinstance(v, list) or len(v) != len(present[0]) for v in present):
        return None
    if any(_number(x) is None and x is not None for v in present for x in v):
        return None
    cols = [_spread([None if v is None else _number(v[i]) for v in lists]) for i in range(len(present[0]))]
    return {"mean": [c["mean"] for c in cols], "std": [c["std"] for c in cols],
            "values": [None if v is None else [_number(x) for x in v] for v in lists]}


def aggregate(trees: list[Any]) -> Any:
    """Aggregate the same-shaped metric trees of several pipeline seeds (None where a seed lacks one).

    ``{mean, std}`` leaves -> ``{mean, std, values, ranker_std}``; numbers -> ``{mean, std, values}``;
    numeric lists -> element-wise; mappings recurse over the union of keys (sorted); strings and
    booleans kept when every seed agrees; anything else dropped."""
    present = [t for t in trees if t is not None]
    if not present:
        return None
    if all(_is_leaf(t) for t in present):
        out = _spread([None if t is None else _number(t["mean"]) for t in trees])
        out["ranker_std"] = [None if t is None else _number(t["std"]) for t in trees]
        return out
    if all(isinstance(t, Mapping) and not _is_leaf(t) for t in present):
        keys = sorted({k for t in present for k in t if k not in SKIP_KEYS})
        out = {}
        for k in keys:
            sub = aggregate([None if t is None else t.get(k) for t in trees])
            if sub is None and any(k in t and t[k] is None for t in present):
                sub = _spread([None] * len(trees))  # undefined in every seed (e.g. a one-class AUC): kept, null
            if sub is not None:
                out[k] = sub
        return out or None
    if all(_number(t) is not None or (isinstance(t, (int, float)) and not isinstance(t, bool)) for t in present):
        return _spread([None if t is None else _number(t) for t in trees])
    if all(isinstance(t, list) for t in present):
        return _spread_lists(trees)
    if all(isinstance(t, (str, bool)) for t in present) and len({repr(t) for t in present}) == 1:
        return present[0]
    return None


def summarize_study(runs: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Per-seed metrics.json dicts (pipeline seed -> metrics) -> the figures of study.json."""
    seeds = list(runs)
    metrics = [runs[s] for s in seeds]
    rank = [m.get("rank") for m in metrics]
    out: dict[str, Any] = {"kind": "study"}
    out["variants"] = aggregate([None if r is None else r.get("variants") for r in rank]) or {}
    out["buckets"] = aggregate([None if r is None else r.get("buckets") for r in rank]) or {}
    rest = aggregate([None if r is None else {k: v for k, v in r.items() if k not in ("variants", "buckets")}
                      for r in rank])
    if rest:
        out["rank"] = rest
    for section in SEED_SECTIONS:
        agg = aggregate([m.get(section) for m in metrics])
        if agg:
            out[section] = agg
    return out


def load_results(path: str | Path) -> dict[str, Any]:
    """A run directory (its metrics.json), a study directory (its study.json) or either JSON file.

    A run's metrics come back as they are, with its ``config.json`` under ``config`` when present."""
    p = Path(path)
    if p.is_dir():
        if (p / GRID_FILE).is_file():
            p = p / GRID_FILE
        elif (p / STUDY_FILE).is_file():
            p = p / STUDY_FILE
        elif (p / "metrics.json").is_file():
            p = p / "metrics.json"
        else:
            raise QarmError(f"{path}: none of {GRID_FILE} (qarm study --grid), {STUDY_FILE} (qarm study) "
                            "or metrics.json (qarm run) is there")
    if not p.is_file():
        raise QarmError(f"{path}: no such file or directory")
    try:
        data = read_json(p)
    except ValueError as exc:
        raise QarmError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QarmError(f"{p}: expected a JSON object of metrics")
    if data.get("kind") not in ("study", "grid") and "config" not in data and (p.parent / "config.json").is_file():
        data = {**data, "config": read_json(p.parent / "config.json")}
    return data


def export_results(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the JSON of a run or study to ``dst`` as committed evidence (e.g. ``docs/results/``).

    A study's study.json already names its config, git commit and command and is written as is.
    A run's metrics.json gets ``kind: run``, its ``config.json`` under ``config``, and the git commit
    of the checkout at export time (a run directory does not record the commit it ran on)."""
    data = load_results(src)
    if data.get("kind") not in ("study", "grid"):
        data = {**data, "kind": "run", "qarm_version": __version__,
                **{f"exported_{k}": v for k, v in git_commit().items()}}
    write_json(dst, data)
    return data
