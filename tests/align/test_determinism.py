"""Determinism, offline and online (issue 12 item 1): the same content gives the same embedding bits
and the same codes whatever batch it arrives in and whichever path computes it.

Unit level (tiny towers, toy stores): tower features and aligned embeddings of a row do not depend
on the other rows of the call, nor on the batch size it is split into. Pipeline level (real
ml-100k, tests/configs/ml100k-fast.yaml): a second run of the same config gives byte-identical
pairs, embeddings and codes; the encoder reproduces emb_raw.npy / emb_aligned.npy bit for bit.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from align_helpers import TEST_CONFIGS

from qarm.align.encoder import load_item_encoder
from qarm.align.inputs import ItemContent, ItemStore, raw_embedding, tower_features
from qarm.align.model import AlignModel
from qarm.align.towers import load_text_tower
from qarm.align.train import embed_rows
from qarm.config import load_config
from qarm.io import read_parquet
from qarm.runner import run_stages

STAGES = ["prepare", "pairs", "align", "quantize"]


def _subsets(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size, replace=False)) for size in (1, 7, min(200, n))]


def test_text_tower_features_are_batch_invariant(tiny_bert):
    tower = load_text_tower(str(tiny_bert), 32)
    texts = [f"film number {i} " + "about things " * (i % 9) for i in range(45)] + [""] * 3
    content = ItemContent(texts, [None] * len(texts), [None] * len(texts))
    full, ok = tower_features(tower, content, "text", 32, batch_size=16, progress=False)
    assert ok.sum() == 45 and not full[~ok].any()
    for rows in _subsets(len(texts)):
        sub = ItemContent([texts[i] for i in rows], [None] * len(rows), [None] * len(rows))
        got, _ = tower_features(tower, sub, "text", 32, batch_size=16, progress=False)
        assert np.array_equal(got, full[rows])  # bits, not a tolerance
    shuffled = np.random.default_rng(1).permutation(len(texts))
    got, _ = tower_features(tower, ItemContent([texts[i] for i in shuffled], [None] * 48, [None] * 48), "text", 32,
                            batch_size=16, progress=False)
    assert np.array_equal(got, full[shuffled])


def _toy_store(n: int = 300, seed: int = 0) -> ItemStore:
    rng = np.random.default_rng(seed)
    present = rng.random((n, 2)) < 0.85
    present[~present.any(1), 0] = True
    store = ItemStore(["text", "image"], present, feats={"text": rng.normal(size=(n, 24)).astype(np.float32),
                                                         "image": rng.normal(size=(n, 20)).astype(np.float32)})
    store.raw = raw_embedding(store)
    return store


@pytest.mark.parametrize("fusion", ["mlp", "transformer"])
def test_embed_rows_is_batch_invariant(fusion):
    store = _toy_store()
    torch.manual_seed(0)
    model = AlignModel({"text": 24, "image": 20}, {}, hidden=32, dim=16, kind=fusion)
    full = embed_rows(model, store)
    for rows in _subsets(len(store)):
        assert np.array_equal(embed_rows(model, store, rows), full[rows])
    assert np.array_equal(embed_rows(model, store, np.arange(len(store))[::-1]), full[::-1])


def test_raw_embedding_rows_do_not_depend_on_other_rows():
    store = _toy_store()
    rows = np.array([5, 17, 123])
    sub = ItemStore(store.modalities, store.present[rows], feats={m: f[rows] for m, f in store.feats.items()})
    assert np.array_equal(raw_embedding(sub), store.raw[rows])


@pytest.fixture(scope="module")
def run_dir(ml100k_path, pipeline_run):
    return pipeline_run("ml100k-fast", STAGES)


@pytest.mark.slow
def test_second_run_of_the_same_config_is_byte_identical(run_dir, ml100k_path, tmp_path):
    """Run 2 recomputes every stage up to quantize; only the frozen tower feature cache is shared
    (it is a pure function of tower spec and content, keyed by both)."""
    second = tmp_path / "second"
    (second / "align").mkdir(parents=True)
    shutil.copytree(run_dir / "align" / "cache", second / "align" / "cache")
    cfg = load_config(TEST_CONFIGS / "ml100k-fast.yaml", [f"data.path={ml100k_path}"])
    threads = {s: e["torch_threads"] for s, e in json.loads((run_dir / "manifest.json").read_text())["stages"].items()}
    before = torch.get_num_threads()
    try:  # the shared run may have been made under another test module's thread count
        for stage in STAGES:
            torch.set_num_threads(threads[stage])
            run_stages(cfg, second, stages=[stage], log=lambda _: None)
    finally:
        torch.set_num_threads(before)
    for name in ("items.parquet", "events.parquet", "pairs.parquet", "emb_raw.npy", "emb_aligned.npy",
                 "codes.parquet"):
        assert (second / name).read_bytes() == (run_dir / name).read_bytes(), name


def test_encoder_reproduces_exported_embedding_bits(run_dir):
    items = read_parquet(run_dir / "items.parquet")
    raw, aligned = np.load(run_dir / "emb_raw.npy"), np.load(run_dir / "emb_aligned.npy")
    enc = load_item_encoder(run_dir)
    for rows in _subsets(len(items), seed=3):
        sub = items.iloc[rows]
        assert np.array_equal(enc.encode(sub), aligned[rows])
        assert np.array_equal(enc.encode_raw(sub), raw[rows])


def test_encoder_bits_do_not_depend_on_batch_neighbours(run_dir):
    """An item encoded alone, with a different company, or with a made-up item equals its row."""
    items = read_parquet(run_dir / "items.parquet")
    aligned = np.load(run_dir / "emb_aligned.npy")
    enc = load_item_encoder(run_dir)
    other = items.iloc[[3]].assign(item_id=10**9, text="A film nobody has seen. Genres: Drama.", image=None,
                                   has_image=False)
    for company in (items.iloc[[40]], pd.concat([other, items.iloc[[40]], items.iloc[100:110]])):
        got = enc.encode(company)
        pos = int(np.flatnonzero(company["item_id"].to_numpy() == items["item_id"].iloc[40])[0])
        assert np.array_equal(got[pos], aligned[40])
