"""Load test of ``qarm serve`` on 127.0.0.1: latency percentiles and throughput per endpoint.

Starts the server on a free local port over a finished run directory (or talks to ``--url``, which
must be a 127.0.0.1/localhost address), then runs, each bounded by a request count and
``--max-seconds``:

- closed loop, ``--clients`` concurrent clients:
  ``GET /health`` (the reference: a bare HTTP round trip through the same stack),
  ``GET /items/{id}/codes`` (code lookup), ``POST /items/codes`` (``--batch`` items, not stored),
  ``POST /rank`` (``--candidates`` candidates of which ``--new-candidates`` are newly ingested items),
  and a burst of bad inputs (malformed JSON/base64, oversized bodies and images, paths outside the
  root, unknown ids, raw socket garbage) while lookups keep running;
- open loop, at rising request rates (``--rank-rates``, ``--ingest-rates``, ``--image-rates``), each
  step ``--step-seconds`` long, until p99 passes its goal: ``POST /rank`` (goal ``--rank-goal-ms``),
  ``POST /items`` with text only (``--ingest-goal-ms``) and with text + image (``--image-goal-ms``);
  every ``--fuzz-every``-th request of a step is a malformed one, mixed into the load. The
  sustained rate is the highest step whose p99 met the goal with the offered rate achieved.

Also times the same encode+assign and rank calls in-process (no HTTP) as the model floor. Exits
non-zero if any request got a 5xx, a good request failed, or the server stopped answering.

    python benchmarks/load_test.py --run /tmp/srv-demo                    # ~3-5 minutes on 2 cores
    python benchmarks/load_test.py --run /tmp/srv-demo --requests 1000 --max-seconds 20
    python benchmarks/load_test.py --run RUN --codes redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
import numpy as np

from qarm.io import read_parquet
from qarm.serve.probe import send_raw_garbage


# ----------------------------------------------------------------------------- server process

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, media_root: str, codes: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "qarm", "serve", "--run", str(run), "--host", "127.0.0.1", "--port", str(port),
           "--media-root", media_root]
    if codes:
        cmd += ["--codes", codes]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"server did not answer /health in 180s:\n{log_path.read_text()[-3000:]}")


# ----------------------------------------------------------------------------- load generation

def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of process ``pid`` so far (Linux /proc); 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


SERVER_PID: int | None = None  # set when this script started the server: its CPU per request is reported


async def run_phase(url: str, make: Callable[[int], dict[str, Any]], n_requests: int, clients: int,
                    max_seconds: float) -> dict[str, Any]:
    """``clients`` workers send ``make(i)`` requests until ``n_requests`` are done or time is up.

    Besides wall-clock latency (which on a shared machine includes waiting for a core), reports the
    server's own CPU time per request: the figure that other load on the machine disturbs least.
    """
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    next_i = 0
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_i
            while next_i < n_requests and time.perf_counter() < deadline:
                i = next_i
                next_i += 1
                req = make(i)
                t0 = time.perf_counter()
                try:
                    r = await client.request(req.pop("method"), req.pop("path"), **req)
                    statuses[r.status_code] += 1
                    latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1

        t0, cpu0 = time.perf_counter(), cpu_seconds(SERVER_PID)
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(SERVER_PID) - cpu0
    lat = np.array(latencies) * 1e3
    n_done = len(latencies) + sum(errors.values())
    return {"n": len(latencies), "wall_s": wall, "rps": len(latencies) / wall if wall else 0.0,
            "server_cpu_ms": 1e3 * cpu / n_done if n_done and SERVER_PID else float("nan"),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "statuses": dict(statuses), "errors": dict(errors)}


def raw_garbage(url: str) -> int:
    """Raw-socket garbage (``qarm.serve.probe``) against the server at ``url``. Returns the count."""
    parts = urlsplit(url)
    return send_raw_garbage(parts.hostname, parts.port)


# ----------------------------------------------------------------------------- request bodies

def media_path(value: Any) -> str | None:
    """A media column value -> a path, or None where the item has none (None, NaN, "")."""
    return value if isinstance(value, str) and value.strip() else None


def b64_file(path: Any) -> str | None:
    path = media_path(path)
    return None if path is None else base64.b64encode(Path(path).read_bytes()).decode()


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""


def new_item(row: Any, item_id: int | None = None, media: tuple[str, ...] = ("image", "audio")) -> dict[str, Any]:
    """An items.parquet row as request content: text fields, and the ``media`` it has as base64."""
    item = {"item_id": int(row.item_id if item_id is None else item_id), "title": text_of(row.title),
            "description": text_of(row.description), "tags": text_of(row.tags), "category": text_of(row.category)}
    if not any(item[k].strip() for k in ("title", "description", "tags", "category")):
        item["text"] = text_of(getattr(row, "text", "")) or f"item {item['item_id']}"
    for kind in media:
        if getattr(row, f"has_{kind}", True) is not False and media_path(getattr(row, kind, None)):
            item[f"{kind}_b64"] = b64_file(getattr(row, kind))
    return item


def bad_requests(item_id: int) -> list[dict[str, Any]]:
    """One of each kind of bad input; every one must get a 4xx."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")
    bomb_b64 = base64.b64encode(bomb.getvalue()).decode()
    json_h = {"content-type": "application/json"}

    def items(**kw: Any) -> dict[str, Any]:
        return {"method": "POST", "path": "/items/codes", "json": {"items": [{"title": "x", **kw}]}}

    return [
        {"method": "POST", "path": "/items/codes", "content": b'{"items": [', "headers": json_h},
        {"method": "POST", "path": "/rank", "content": b"\xff\xfe", "headers": json_h},
        {"method": "POST", "path": "/rank", "content": b"[" * 50_000, "headers": json_h},
        {"method": "POST", "path": "/rank", "content": b'{"candidates": [1]}'},
        items(image_b64="@@not base64@@"),
        items(image_b64=base64.b64encode(b"plain text, not an image").decode()),
        items(image_b64=bomb_b64),
        items(audio_b64=base64.b64encode(b"RIFF0000WAVEjunk").decode()),
        items(image_path="../../../../etc/passwd"),
        items(image_path="/etc/hostname"),
        items(descripton="typo"),
        {"method": "POST", "path": "/items/codes", "json": {"items": [{"title": "x"}] * 10_000}},
        {"method": "GET", "path": "/items/not-a-number/codes"},
        {"method": "GET", "path": "/items/99999999999999999999999/codes"},
        {"method": "GET", "path": f"/items/{10**15}/codes"},
        {"method": "POST", "path": "/rank", "json": {"candidates": [10**15], "history": []}},
        {"method": "POST", "path": "/rank", "json": {"candidates": [item_id], "variant": "no-such-variant"}},
        {"method": "POST", "path": "/rank", "json": {"candidates": list(range(100_000))}},
        {"method": "POST", "path": "/rank", "content": b" " * 17_000_000, "headers": json_h},
        {"method": "POST", "path": "/items", "json": {"items": [{"title": "no id"}]}},
        {"method": "POST", "path": "/items", "json": {"items": [{"item_id": item_id, "title": "catalogue id"}]}},
        {"method": "DELETE", "path": f"/items/{item_id}"},
    ]


# ----------------------------------------------------------------------------- in-process floor

def in_process_floor(run: Path, items_batch: list[dict], new_items: list[dict], history: list[int],
                     candidates: list[int], repeat: int) -> dict[str, float]:
    """Median seconds of the same encode+assign and rank calls without HTTP: the server's own
    ``ServeModels`` methods, called from a worker thread as the server's thread pool calls them.
    ``new_items`` are ingested into this process's own (in-memory) item store first, so the rank
    call scores the same mix of catalogue and new candidates as the HTTP phase."""
    from concurrent.futures import ThreadPoolExecutor

    from qarm.serve.app import create_app
    from qarm.serve.schemas import all_request_models
    from qarm.serve.service import load_serve_config

    app = create_app(run)
    state = app.state.serve
    models = state.current
    _, ItemsRequest, _, IngestRequest = all_request_models(load_serve_config(run))
    body = ItemsRequest(items=items_batch)
    ingest = IngestRequest(items=new_items)
    one_text = IngestRequest(items=[{k: v for k, v in new_items[0].items() if not k.endswith("_b64")}])

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return float(np.median(t))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(models.preload).result()
        pool.submit(models.ingest, ingest.items, False, state.items).result()
        return {"encode_assign": pool.submit(timed, lambda: models.encode_items(body.items)).result(),
                "rank": pool.submit(timed, lambda: models.rank(history, candidates, None, None, state.items)).result(),
                "ingest_text": pool.submit(timed, lambda: models.ingest(one_text.items, False, state.items)).result()}


# ----------------------------------------------------------------------------- open-loop rate steps

async def run_rate(url: str, make: Callable[[int], dict[str, Any]], rate: float, seconds: float,
                   bad: list[dict[str, Any]], fuzz_every: int, max_inflight: int = 64,
                   timeout: float = 30.0) -> dict[str, Any]:
    """Offer ``rate`` requests/s for ``seconds`` (open loop: request i leaves at i / rate whether or
    not earlier ones answered); every ``fuzz_every``-th request is a malformed one from ``bad``.
    Latency of the good requests is measured from the moment each was due to leave, so a server
    that falls behind shows it in p99 (no coordinated omission). At most ``max_inflight`` requests
    are open at once (well under the server's ``limit_concurrency``, whose overflow answer is a 503);
    a request unanswered after ``timeout`` seconds counts as ``timeouts``, so an overloaded step
    ends at most ``timeout`` seconds late."""
    n_total = max(1, int(rate * seconds))
    latencies: list[float] = []
    statuses: Counter = Counter()
    bad_statuses: Counter = Counter()
    errors: Counter = Counter()
    timeouts = 0
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter() + 0.05

        async def one(i: int) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            is_bad = fuzz_every > 0 and i % fuzz_every == fuzz_every - 1
            req = dict(bad[(i // fuzz_every) % len(bad)]) if is_bad else make(i)
            nonlocal timeouts
            try:
                r = await client.request(req.pop("method"), req.pop("path"), **req)
            except httpx.TimeoutException:
                timeouts += 1
                return
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                return
            if is_bad:
                bad_statuses[r.status_code] += 1
            else:
                statuses[r.status_code] += 1
                latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i) for i in range(n_total)))
        wall = time.perf_counter() - start
    lat = np.array(latencies) * 1e3
    return {"offered_rps": rate, "achieved_rps": len(latencies) / wall if wall else 0.0, "n": len(latencies),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "statuses": dict(statuses), "bad_statuses": dict(bad_statuses), "errors": dict(errors),
            "timeouts": timeouts}


def rising_rates(url: str, name: str, make: Callable[[int], dict[str, Any]], rates: list[float], goal_ms: float,
                 seconds: float, bad: list[dict[str, Any]], fuzz_every: int) -> dict[str, Any]:
    """Steps of ``run_rate`` at each of ``rates`` until one misses the p99 goal (that one is kept)."""
    steps = []
    sustained = 0.0
    for rate in rates:
        res = asyncio.run(run_rate(url, make, rate, seconds, bad, fuzz_every))
        res["met"] = (res["p99_ms"] <= goal_ms and res["achieved_rps"] >= 0.95 * rate and not res["errors"]
                      and not res["timeouts"] and set(res["statuses"]) == {200})
        steps.append(res)
        extra = (f" errors={res['errors']}" if res["errors"] else "") + \
            (f" timeouts={res['timeouts']}" if res["timeouts"] else "")
        print(f"  {name:<28} {rate:>7.1f}/s -> {res['achieved_rps']:7.1f}/s  p50 {res['p50_ms']:8.1f} ms  "
              f"p99 {res['p99_ms']:8.1f} ms  (goal {goal_ms:.0f})  {res['statuses']} bad {res['bad_statuses']}{extra}",
              flush=True)
        if not res["met"]:
            break
        sustained = rate
    return {"goal_p99_ms": goal_ms, "sustained_rps": sustained, "steps": steps}


# ----------------------------------------------------------------------------- main

def fmt_row(name: str, res: dict[str, Any], ref: dict[str, Any] | None, floor_ms: float | None = None) -> str:
    ratio = f"{res['p50_ms'] / ref['p50_ms']:7.1f}x" if ref else "    ref"
    fl = f"{res['p50_ms'] / floor_ms:6.2f}x" if floor_ms else "     -"
    return (f"{name:<34} {res['n']:>6} {res['p50_ms']:>9.2f} {res['p99_ms']:>9.2f} {res['rps']:>9.1f} "
            f"{res['server_cpu_ms']:>9.2f} {ratio:>11} {fl:>11}  "
            f"{res['statuses']}{' errors=' + str(res['errors']) if res['errors'] else ''}")


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="finished run directory (prepare..train)")
    ap.add_argument("--url", default="", help="use this running server (127.0.0.1 only) instead of starting one")
    ap.add_argument("--codes", default="", help="codes store for the started server (sqlite:///..., redis://...)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=3000, help="requests per lookup phase (others: fewer)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--new-candidates", type=int, default=10, help="of --candidates, newly ingested items")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time bound per closed-loop phase")
    ap.add_argument("--rank-rates", default="25,50,100,150,200,300", help="offered /rank rates (req/s), rising")
    ap.add_argument("--ingest-rates", default="5,10,20,30,40", help="offered text-only POST /items rates")
    ap.add_argument("--image-rates", default="2,5,10,20", help="offered text + image POST /items rates")
    ap.add_argument("--rank-goal-ms", type=float, default=50.0)
    ap.add_argument("--ingest-goal-ms", type=float, default=200.0)
    ap.add_argument("--image-goal-ms", type=float, default=500.0)
    ap.add_argument("--step-seconds", type=float, default=5.0, help="length of each rate step")
    ap.add_argument("--fuzz-every", type=int, default=20, help="every Nth request of a rate step is malformed")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.url and urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("--url must point at 127.0.0.1/localhost: this script only loads local servers")
    if not 0 <= args.new_candidates <= args.candidates:
        sys.exit("--new-candidates must lie in [0, --candidates]")
    rng = np.random.default_rng(args.seed)
    items = read_parquet(args.run / "items.parquet")
    events = read_parquet(args.run / "events.parquet", columns=["user_id", "item_id", "timestamp", "split"])
    ids = items["item_id"].to_numpy()
    media = [p for col in ("image", "audio") if col in items.columns for p in items[col].dropna() if media_path(p)]
    media_root = os.path.commonpath(media) if media else ""
    train = events[events["split"] == "train"]
    users = train["user_id"].value_counts().index[:200].to_numpy()
    histories = {int(u): g.sort_values("timestamp")["item_id"].tolist()[-50:] for u, g in
                 train[train["user_id"].isin(users)].groupby("user_id")}
    rows = list(items.itertuples())
    batches = [[new_item(rows[j]) for j in rng.choice(len(rows), args.batch, replace=False)] for _ in range(8)]
    n_codes = len(read_parquet(args.run / "codes.parquet", columns=["item_id"]))
    # ids for newly ingested items, above the catalogue: "new" ranked items, then the ingest load's own
    base = int(ids.max()) + 1_000
    with_image = [r for r in rows if getattr(r, "has_image", True) is not False and media_path(getattr(r, "image", None))]
    new_for_rank = [new_item(rows[j], base + k, media=()) for k, j in
                    enumerate(rng.choice(len(rows), max(args.new_candidates * 5, 1), replace=False))]
    new_ids = [it["item_id"] for it in new_for_rank]
    text_pool = [new_item(rows[j], 0, media=()) for j in rng.choice(len(rows), 64, replace=False)]
    image_pool = [new_item(with_image[j], 0, media=("image",)) for j in
                  rng.choice(len(with_image), min(32, len(with_image)), replace=False)] if with_image else []

    proc = None
    log = Path(tempfile.mkdtemp(prefix="qarm-load-")) / "server.log"
    url = args.url
    if not url:
        t0 = time.perf_counter()
        proc, url = start_server(args.run, media_root, args.codes, log)
        global SERVER_PID
        SERVER_PID = proc.pid
        print(f"server up in {time.perf_counter() - t0:.1f}s at {url} (log {log})")
    try:
        health = httpx.get(f"{url}/health").json()
        print(f"run {args.run}: {len(ids)} items, {n_codes} codes in {health['codes_store']} (version "
              f"{health.get('version')}); {args.clients} clients, {os.cpu_count()} CPU cores shared by server and "
              f"clients; load average {os.getloadavg()[0]:.2f} at start", flush=True)
        r = httpx.post(f"{url}/items", json={"items": new_for_rank}, timeout=600)
        if r.status_code != 200:
            sys.exit(f"could not ingest the new items the rank phases use: {r.status_code} {r.text[:500]}")
        print(f"ingested {len(new_ids)} new items (ids from {base}) for /rank", flush=True)
        user_list = list(histories)
        lookup = lambda i: {"method": "GET", "path": f"/items/{ids[(i * 7919) % len(ids)]}/codes"}  # noqa: E731

        def rank_req(i: int) -> dict[str, Any]:
            u = user_list[i % len(user_list)]
            r_ = np.random.default_rng(i)
            cands = ids[r_.choice(len(ids), args.candidates - args.new_candidates, replace=False)].tolist()
            cands += [new_ids[j] for j in r_.choice(len(new_ids), args.new_candidates, replace=False)]
            return {"method": "POST", "path": "/rank", "json": {"user_id": u, "history": histories[u],
                                                                "candidates": cands}}

        ingest_counter = iter(range(10**9))

        def ingest_req(pool: list[dict]) -> Callable[[int], dict[str, Any]]:
            def make(i: int) -> dict[str, Any]:
                item = dict(pool[i % len(pool)], item_id=base + 100_000 + next(ingest_counter))
                return {"method": "POST", "path": "/items", "json": {"items": [item]}}
            return make

        results: dict[str, dict[str, Any]] = {}
        phase = lambda make, n: asyncio.run(run_phase(url, make, n, args.clients, args.max_seconds))  # noqa: E731
        phase(lambda i: {"method": "GET", "path": "/health"}, 200)  # warm-up: connections, code paths
        results["health"] = phase(lambda i: {"method": "GET", "path": "/health"}, args.requests)
        results["codes_get"] = phase(lookup, args.requests)
        phase(lambda i: {"method": "POST", "path": "/items/codes", "json": {"items": batches[i % 8]}}, 2)
        results["items_codes"] = phase(
            lambda i: {"method": "POST", "path": "/items/codes", "json": {"items": batches[i % len(batches)]}},
            max(16, args.requests // 30))
        phase(rank_req, 2)
        results["rank"] = phase(rank_req, max(50, args.requests // 10))
        # one client: latency without queueing behind other clients' model calls (models run one at a time)
        one = lambda make, n: asyncio.run(run_phase(url, make, n, 1, args.max_seconds))  # noqa: E731
        results["items_codes_1c"] = one(
            lambda i: {"method": "POST", "path": "/items/codes", "json": {"items": batches[i % len(batches)]}}, 8)
        results["rank_1c"] = one(rank_req, max(20, args.requests // 30))
        results["ingest_text_1c"] = one(ingest_req(text_pool), max(20, args.requests // 30))

        async def mixed() -> tuple[dict, dict]:
            # lookups while cold-start encodes hold the model lock: the event loop must keep answering
            enc = run_phase(url, lambda i: {"method": "POST", "path": "/items/codes",
                                            "json": {"items": batches[i % len(batches)]}}, 4, 2, args.max_seconds)
            look = run_phase(url, lookup, args.requests // 3, max(2, args.clients // 2), args.max_seconds)
            return tuple(await asyncio.gather(enc, look))  # type: ignore[return-value]

        results["items_codes_mixed"], results["codes_get_during_encodes"] = asyncio.run(mixed())

        # bad-input burst, with lookups running beside it
        bad = bad_requests(int(ids[0]))

        async def burst() -> tuple[dict, dict]:
            bad_task = run_phase(url, lambda i: dict(bad[i % len(bad)]), len(bad) * 10, max(2, args.clients // 2),
                                 args.max_seconds)
            good_task = run_phase(url, lookup, args.requests // 3, max(2, args.clients // 2), args.max_seconds)
            return tuple(await asyncio.gather(bad_task, good_task))  # type: ignore[return-value]

        results["bad_burst"], results["codes_get_during_burst"] = asyncio.run(burst())
        n_garbage = raw_garbage(url)
        results["codes_get_after_burst"] = phase(lookup, args.requests)

        # open loop at rising rates, malformed requests mixed in
        print(f"\nopen-loop steps of {args.step_seconds:g}s, every {args.fuzz_every}th request malformed:", flush=True)
        rates = {
            "rank": rising_rates(url, f"POST /rank ({args.candidates}, {args.new_candidates} new)", rank_req,
                                 _rates(args.rank_rates), args.rank_goal_ms, args.step_seconds, bad, args.fuzz_every),
            "ingest_text": rising_rates(url, "POST /items text only", ingest_req(text_pool), _rates(args.ingest_rates),
                                        args.ingest_goal_ms, args.step_seconds, bad, args.fuzz_every),
        }
        if image_pool:
            rates["ingest_image"] = rising_rates(url, "POST /items text + image", ingest_req(image_pool),
                                                 _rates(args.image_rates), args.image_goal_ms, args.step_seconds, bad,
                                                 args.fuzz_every)
        alive = httpx.get(f"{url}/health", timeout=10).status_code == 200

        floor = in_process_floor(args.run, batches[0], new_for_rank, histories[user_list[0]],
                                 rank_req(0)["json"]["candidates"], repeat=5)
        ref = results["health"]
        print(f"\n{'endpoint':<34} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>9} {'srv cpu ms':>9} "
              f"{'p50/health':>11} {'p50/in-proc':>11}  statuses")
        print(fmt_row("GET /health (reference)", ref, None))
        print(fmt_row("GET /items/{id}/codes", results["codes_get"], ref))
        print(fmt_row(f"POST /items/codes (batch {args.batch})", results["items_codes"], ref,
                      floor["encode_assign"] * 1e3))
        print(fmt_row(f"POST /rank ({args.candidates} cand, {args.new_candidates} new)", results["rank"], ref,
                      floor["rank"] * 1e3))
        print(fmt_row("POST /items/codes, 1 client", results["items_codes_1c"], ref, floor["encode_assign"] * 1e3))
        print(fmt_row("POST /rank, 1 client", results["rank_1c"], ref, floor["rank"] * 1e3))
        print(fmt_row("POST /items (1, text), 1 client", results["ingest_text_1c"], ref, floor["ingest_text"] * 1e3))
        print(fmt_row("GET codes during encodes", results["codes_get_during_encodes"], ref))
        print(fmt_row("bad-input burst", results["bad_burst"], ref))
        print(fmt_row("GET codes during the burst", results["codes_get_during_burst"], ref))
        print(fmt_row("GET codes after the burst", results["codes_get_after_burst"], ref))
        print(f"\nin-process floor (no HTTP, same calls): encode+assign {args.batch} items "
              f"{floor['encode_assign'] * 1e3:.1f} ms, rank {args.candidates} candidates ({args.new_candidates} new) "
              f"{floor['rank'] * 1e3:.2f} ms, ingest of 1 text item {floor['ingest_text'] * 1e3:.1f} ms")
        for name in ("items_codes", "rank"):
            per = 1e3 / results[name]["rps"]
            key = "encode_assign" if name == "items_codes" else "rank"
            print(f"{name}: {per:.1f} ms of server time per request at {args.clients} clients "
                  f"(1 / throughput) = {per / (floor[key] * 1e3):.2f}x the in-process call")
        print("\nsustained rates (p99 within goal, offered rate achieved, all 200):")
        for name, res in rates.items():
            print(f"  {name:<14} {res['sustained_rps']:>7.1f} req/s (goal p99 <= {res['goal_p99_ms']:.0f} ms)")
        print(f"raw-socket garbage connections: {n_garbage}; server alive after: {alive}; "
              f"load average {os.getloadavg()[0]:.2f} at the end")

        fivexx = sum(v for k, v in results["bad_burst"]["statuses"].items() if k >= 500)
        fivexx += sum(v for res in rates.values() for st in res["steps"]
                      for part in ("statuses", "bad_statuses") for k, v in st[part].items() if k >= 500)
        bad_ok = all(400 <= k < 500 for res in rates.values() for st in res["steps"] for k in st["bad_statuses"])
        good_fail = sum(sum(v for k, v in results[p]["statuses"].items() if k != 200) + sum(results[p]["errors"].values())
                        for p in ("health", "codes_get", "items_codes", "rank", "codes_get_during_burst",
                                  "items_codes_1c", "rank_1c", "ingest_text_1c",
                                  "codes_get_after_burst", "items_codes_mixed", "codes_get_during_encodes"))
        conn_errors = sum(sum(st["errors"].values()) for res in rates.values() for st in res["steps"])
        ok = alive and fivexx == 0 and bad_ok and good_fail == 0 and conn_errors == 0 and not results["bad_burst"]["errors"]
        print(f"answers 5xx: {fivexx}; malformed requests all 4xx: {bad_ok}; good closed-loop requests failed: "
              f"{good_fail}; connection errors in the rate steps: {conn_errors} -> {'PASS' if ok else 'FAIL'}")
        if args.json:
            args.json.write_text(json.dumps({"results": results, "rates": rates, "in_process_s": floor,
                                             "alive": alive, "clients": args.clients, "batch": args.batch,
                                             "candidates": args.candidates, "new_candidates": args.new_candidates,
                                             "loadavg_end": os.getloadavg()}, indent=2, default=str))
        return 0 if ok else 1
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
