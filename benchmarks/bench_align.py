"""Benchmark: item encoding throughput per tower, and alignment training throughput per mode (CPU).

Towers (real ml-100k plot text and posters, frozen, batched ``--encode-batch``): items/s of the
text tower (all-MiniLM-L6-v2), image tower (EfficientNet-Lite0 at ``--image-size``) and audio
tower (log-mel + CNN on ``--audio-seconds`` clips). Reference, same run: the same towers fed one
item at a time (batch 1, the naive loop); ratio = batched / one-at-a-time.

Training (``--pairs`` random pairs among ``--items`` ml-100k items, batch ``--batch``): pairs/s
of one epoch in each mode: head (frozen features from the cache), partial (top block of each
tower), full, lora (text tower adapters). Reference, same run: the raw towers' forward-only pair
throughput (text + image forward of both items of a pair, no gradient); ratio = mode / reference.

    python benchmarks/bench_align.py                          # ~5-10 minutes on 2 cores
    python benchmarks/bench_align.py --items 64 --pairs 64 --image-size 128   # ~1-2 minutes
"""

from __future__ import annotations

import argparse
import ast
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qarm.align.audio import AudioCNN, LogMel
from qarm.align.inputs import build_store, read_content
from qarm.align.model import AlignModel
from qarm.align.towers import load_image_tower, load_text_tower
from qarm.align.train import AlignTrainer, configure_towers

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens-100k"


def ml100k_items(root: Path, n: int) -> pd.DataFrame:
    """The first ``n`` ml-100k items that have a poster and an IMDb plot: text as the prepare stage builds it."""
    imdb = pd.read_csv(root / "imdb_details.csv").set_index("movie_id")
    rows = []
    for item_id in sorted(imdb.index):
        poster = root / "posters" / f"{item_id}.jpg"
        if not poster.exists():
            continue
        r = imdb.loc[item_id]
        genres = ", ".join(ast.literal_eval(r["genre"])) if isinstance(r["genre"], str) else ""
        text = f"{r['movie_title']}. Genres: {genres}. Plot: {r['description']}"
        rows.append({"item_id": int(item_id), "text": text, "image": str(poster)})
        if len(rows) == n:
            break
    return pd.DataFrame(rows)


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def tower_rates(text, image, store, n_single: int, batch: int, audio_seconds: float) -> dict[str, tuple[float, float]]:
    """{tower: (batched items/s, one-at-a-time items/s)}."""
    n = len(store)
    tok = {k: torch.from_numpy(v) for k, v in store.tokens.items()}
    pix = torch.from_numpy(store.pixels)

    def text_run(rows, b):
        for a in range(0, len(rows), b):
            r = rows[a:a + b]
            mask = tok["attention_mask"][r]
            w = int(mask.sum(1).max())
            text(input_ids=tok["input_ids"][r, :w], attention_mask=mask[:, :w])

    def image_run(rows, b):
        for a in range(0, len(rows), b):
            image(pix[rows[a:a + b]])

    logmel, cnn = LogMel(16000, 64), AudioCNN(64).eval()
    wav = torch.randn(n, int(16000 * audio_seconds)) * 0.1

    def audio_run(rows, b):
        for a in range(0, len(rows), b):
            cnn(logmel(wav[rows[a:a + b]]))

    out = {}
    rows, single = np.arange(n), np.arange(min(n, n_single))
    for name, fn in (("text", text_run), ("image", image_run), ("audio", audio_run)):
        fn(rows[:2], 2)  # warm-up: first-call allocations
        out[name] = (rate(n, lambda fn=fn: fn(rows, batch)), rate(len(single), lambda fn=fn: fn(single, 1)))
    return out


def train_rate(mode: str, text, image, store, trig, targ, batch: int) -> float:
    towers = {"text": copy.deepcopy(text), "image": copy.deepcopy(image)}
    live, _ = configure_towers(towers if mode != "head" else {}, mode, 1)
    torch.manual_seed(0)
    model = AlignModel({"text": text.out_dim, "image": image.out_dim}, live, hidden=256, dim=128)
    trainer = AlignTrainer(epochs=1, batch_size=batch, lr=1e-3, tower_lr=2e-5, seed=0, progress=False)
    trainer.fit(model, store, trig, targ, np.ones(len(trig), np.float32), np.arange(len(store), dtype=np.int64))
    return trainer.pairs_per_s_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ml100k", type=Path, default=ML100K)
    p.add_argument("--items", type=int, default=128, help="items encoded per tower")
    p.add_argument("--single", type=int, default=32, help="items of the one-at-a-time reference")
    p.add_argument("--pairs", type=int, default=128, help="training pairs per mode (one epoch)")
    p.add_argument("--batch", type=int, default=32, help="training batch (pairs)")
    p.add_argument("--encode-batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--audio-seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default="head,partial,full,lora")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # first optimizer imports torch._dynamo: not timed

    items = ml100k_items(args.ml100k, args.items)
    text, image = load_text_tower("all-minilm-l6-v2", 128), load_image_tower("efficientnet-lite0", "", args.image_size)
    t0 = time.perf_counter()
    store = build_store(read_content(items), {"text": text, "image": image}, ["text", "image"], {"text", "image"},
                        args.image_size, (16000, args.audio_seconds, 64), args.encode_batch, progress=False)
    print(f"{len(items)} ml-100k items (plot text + poster), image {args.image_size} px, "
          f"{args.threads} threads; frozen features + inputs prepared in {time.perf_counter() - t0:.1f}s")

    print("\nencoding throughput (frozen towers, forward only)")
    print(f"{'tower':8s} {'batched items/s':>16s} {'one-at-a-time':>14s} {'ratio':>7s}")
    rates = tower_rates(text, image, store, args.single, args.encode_batch, args.audio_seconds)
    for name, (batched, single) in rates.items():
        print(f"{name:8s} {batched:16.1f} {single:14.1f} {batched / single:6.2f}x")

    rng = np.random.default_rng(0)
    trig = rng.integers(0, len(items), args.pairs)
    targ = (trig + rng.integers(1, len(items), args.pairs)) % len(items)
    forward_pairs = 1.0 / (2.0 / rates["text"][0] + 2.0 / rates["image"][0])  # both items, both towers
    print(f"\ntraining throughput ({args.pairs} pairs, batch {args.batch}); reference: raw towers' "
          f"forward-only = {forward_pairs:.1f} pairs/s")
    print(f"{'mode':8s} {'pairs/s':>10s} {'vs forward-only':>16s}")
    for mode in args.modes.split(","):
        r = train_rate(mode, text, image, store, trig, targ, args.batch)
        print(f"{mode:8s} {r:10.1f} {r / forward_pairs:15.2f}x")


if __name__ == "__main__":
    main()
