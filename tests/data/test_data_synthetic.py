"""The synthetic world: determinism (same seed, same bytes) and the structure it promises."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from qarm.config import load_config
from qarm.data.config import SyntheticConfig
from qarm.data.synthetic import generate_world
from qarm.runner import run_stages

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(pipeline_run, tmp_path):
    first = pipeline_run("demo-fast", ["prepare"])
    second = tmp_path / "again"
    run_stages(load_config(TEST_CONFIGS / "demo-fast.yaml"), second, stages=["prepare"], log=lambda s: None)
    a, b = files_under(first / "data"), files_under(second / "data")
    assert a.keys() == b.keys() and len(a) > 800  # ground truth + 400 PNG + 400 WAV + source.json
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:3]
    assert (first / "events.parquet").read_bytes() == (second / "events.parquet").read_bytes()
    # items differ only by the run folder inside the absolute media paths
    ia, ib = (pq.read_table(d / "items.parquet").to_pandas() for d in (first, second))
    for col in ("image", "audio"):
        ia[col] = ia[col].str.replace(str(first.resolve()), "", regex=False)
        ib[col] = ib[col].str.replace(str(second.resolve()), "", regex=False)
    pd.testing.assert_frame_equal(ia, ib)


def test_other_seed_other_world():
    cfg = SyntheticConfig(n_users=100, n_items=80, n_events=2000)
    w0, w0b, w1 = generate_world(cfg, 0, False), generate_world(cfg, 0, False), generate_world(cfg, 1, False)
    pd.testing.assert_frame_equal(w0.events, w0b.events)
    assert not w0.events.equals(w1.events) and not w0.items.equals(w1.items)


def test_world_structure():
    cfg = SyntheticConfig(n_users=800, n_items=600, n_events=30000, n_topics=16, n_business=12,
                          topic_business_agreement=0.35)
    w = generate_world(cfg, 3, False)
    gt, ev = w.ground_truth, w.events
    # business clusters follow topics only partly: ~35% by construction + ~1/12 of the rest by chance
    agree = (gt["business"] == gt["topic"] % cfg.n_business).mean()
    assert 0.25 < agree < 0.55
    # text follows the topic: items of one topic share their category
    assert w.items.groupby(gt["topic"])["category"].nunique().max() == 1
    # popularity skew: the top 10% of items take a large share of events
    counts = ev["item_id"].value_counts().to_numpy()
    assert counts[: len(gt) // 10].sum() / len(ev) > 0.3
    # users mostly act inside their business cluster; matching events are clicked more often
    ub = w.users.set_index("user_id")["business"]
    ib = gt.set_index("item_id")["business"]
    match = ub.loc[ev["user_id"]].to_numpy() == ib.loc[ev["item_id"]].to_numpy()
    assert match.mean() > 0.6
    assert ev["click"][match].mean() > ev["click"][~match].mean() + 0.15
    assert (ev["like"] <= ev["click"]).all()
    # items arrive over time: no event before an item's introduction, and some arrive late
    intro = gt.set_index("item_id")["introduced_at"]
    assert (ev["timestamp"].to_numpy() >= intro.loc[ev["item_id"]].to_numpy()).all()
    late = intro > np.quantile(ev["timestamp"], 0.9)
    assert late.sum() > 0 and ev["item_id"].isin(intro.index[late]).any()
    assert ev["timestamp"].is_monotonic_increasing


def test_media_decode_and_follow_topic(pipeline_run):
    run = pipeline_run("demo-fast", ["prepare"])
    items = pq.read_table(run / "items.parquet").to_pandas()
    gt = pq.read_table(run / "data" / "ground_truth.parquet").to_pandas()
    assert list(gt.columns[:3]) == ["item_id", "topic", "business"] and len(gt) == len(items)
    assert items["has_image"].all() and items["has_audio"].all()
    with Image.open(items.loc[0, "image"]) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    with wave.open(items.loc[0, "audio"], "rb") as w:
        assert w.getframerate() == 8000 and w.getnframes() == 8000
    # mean image colour separates topics better than chance: images carry the topic
    topic = gt.set_index("item_id").loc[items["item_id"], "topic"].to_numpy()
    colours = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32).mean(axis=(0, 1))
                        for p in items["image"][:200]])
    same = topic[:200, None] == topic[None, :200]
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert dist[same & ~np.eye(200, dtype=bool)].mean() < 0.5 * dist[~same].mean()
    pcm = np.frombuffer(wave.open(io.BytesIO(Path(items.loc[0, "audio"]).read_bytes())).readframes(-1), "<i2")
    assert np.abs(pcm).max() > 10000  # an audible clip, not silence


def test_rerender_replaces_media_folder(tmp_path):
    from qarm.data.synthetic import render_media

    big, small = SyntheticConfig(n_users=20, n_items=30, n_events=100), SyntheticConfig(n_users=20, n_items=10, n_events=100)
    render_media(generate_world(big, 0, False), big, 0, tmp_path / "media", False)
    (tmp_path / ".media.abc.partial").mkdir()  # as left by a run killed mid-render
    paths = render_media(generate_world(small, 0, False), small, 0, tmp_path / "media", False)
    assert sorted(p.name for p in (tmp_path / "media" / "images").iterdir()) == sorted(f"{i}.png" for i in range(1, 11))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media"]
    assert all(Path(p).is_file() for p in paths["image"]) and all(Path(p).is_file() for p in paths["audio"])


def test_business_mark_in_text_and_image():
    """Marked items name their business cluster's studio in the tags and wear its badge; others do not."""
    from qarm.data.synthetic import draw_image, studio_name

    cfg = SyntheticConfig(n_users=50, n_items=300, n_events=500, business_mark_share=0.6)
    w = generate_world(cfg, 2, False)
    gt = w.ground_truth
    assert 0.45 < gt["marked"].mean() < 0.75
    last_tag = w.items["tags"].str.split(", ").str[-1]
    studio = gt["business"].map(studio_name)
    assert (last_tag[gt["marked"]] == studio[gt["marked"]]).all()
    assert not (last_tag[~gt["marked"]] == studio[~gt["marked"]]).any()
    assert len({studio_name(b) for b in range(200)}) == 200  # distinct names
    rng = np.random.default_rng(0)
    plain = np.asarray(Image.open(io.BytesIO(draw_image(3, 16, 64, rng))).convert("RGB"))
    badged = np.asarray(Image.open(io.BytesIO(draw_image(3, 16, 64, np.random.default_rng(0), badge=5,
                                                         n_business=12))).convert("RGB"))
    differ = (plain != badged).any(axis=2)
    assert differ[-9:, -9:].any() and not differ[:-9, :].any()  # only the corner changed


def test_embedding_content(tmp_path):
    """content=embeddings: one float32 .npy aligned to item ids; topic dominates raw neighbours, the
    business mark is there for alignment to find; same seed, same bytes."""
    from qarm.data.synthetic import render_media

    cfg = SyntheticConfig(n_users=300, n_items=1500, n_events=5000, content="embeddings", embedding_dim=64)
    w = generate_world(cfg, 0, False)
    paths = render_media(w, cfg, 0, tmp_path / "a", False)
    render_media(w, cfg, 0, tmp_path / "b", False)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["item_embedding_ids.npy", "item_embeddings.npy"]
    for name in ("item_embeddings.npy", "item_embedding_ids.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    emb, ids = np.load(tmp_path / "a" / "item_embeddings.npy"), np.load(tmp_path / "a" / "item_embedding_ids.npy")
    assert emb.shape == (1500, 64) and emb.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, w.ground_truth["item_id"].to_numpy())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert paths["image"].isna().all() and paths["audio"].isna().all()
    gt = w.ground_truth
    topic, biz, marked = gt["topic"].to_numpy(), gt["business"].to_numpy(), gt["marked"].to_numpy()
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :10]
    assert (topic[nn] == topic[:, None]).mean() > 0.9  # raw neighbours: the topic
    # the mark: marked items' vectors lean towards their business' mean direction (a linear probe
    # that alignment can learn), measurably beyond what the topic explains
    resid = emb - np.stack([emb[topic == t].mean(0) for t in range(cfg.n_topics)])[topic]
    centres = np.stack([resid[marked & (biz == b)].mean(0) for b in range(cfg.n_business)])
    assert ((resid[marked] @ centres.T).argmax(1) == biz[marked]).mean() > 0.6
