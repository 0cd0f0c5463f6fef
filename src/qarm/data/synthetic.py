"""A synthetic multi-modal world where content similarity is not behavioural similarity.

Every item has a latent content **topic** that drives its text (topic vocabulary), its image
(topic hue and shape family, drawn with PIL) and its audio clip (topic chord). Users behave
according to latent **business** clusters: an item's business cluster follows its topic only for a
share ``topic_business_agreement`` of items, the rest are assigned at random, so two items that
look alike are often bought by different people (QARM's "representation unmatching").

Content also carries a quiet **business mark** for a share ``business_mark_share`` of items: a
studio name among the tags, a small badge in a corner of the image (or, with ``content:
embeddings``, a low-weight business direction in the item vector). It predicts behaviour, but
pretrained features hardly notice it next to the topic, which dominates both text and image: that
is what alignment on behaviour pairs has to find, and what lets a cold item's content predict who
clicks it. Behaviour keeps a part no content predicts: the latent item quality, unmarked items whose
business is random, exploration events and the label noise.

Behaviour: Zipf popularity, users with lognormal activity who mostly pick items of their own
business cluster, items introduced over time (a new item gets a short novelty boost), so the last
periods hold cold-start items. ``click`` and ``like`` depend on the user/item business match and a
latent item quality. Same seed, same bytes: all randomness comes from ``seed``, files are written
in a fixed order with fixed encoders.

Generation is vectorised (no Python loop over items or events), so a world of a million items and
tens of millions of events takes minutes; at that size use ``content: embeddings`` (one float32
``.npy`` instead of a PNG and a WAV per item).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from qarm.data.config import SyntheticConfig

START_TS = 1_600_000_000          # 2020-09-13: the world's first second
DURATION_S = 180 * 86_400          # half a year of behaviour
N_PERIODS = 24                     # item introductions and novelty are resolved per period
LAUNCH_SHARE = 0.7                 # items present from the start; the rest arrive over time
FOCUS = 0.8                        # share of a user's events drawn from their business cluster
NOVELTY_BOOST = 3.0                # new items' extra weight, decaying over ~2 periods
DEDUP_ROUNDS = 8                   # redraws of repeated (user, item) events

THEMES: dict[str, list[str]] = {
    "cooking": "recipe kitchen garlic pasta oven spice butter dough soup grill noodle sauce".split(),
    "football": "goal striker stadium match referee league penalty keeper tackle trophy derby coach".split(),
    "music": "guitar melody concert chord drummer album singer rhythm piano chorus band vinyl".split(),
    "travel": "passport airport journey hotel island backpack map cruise temple beach train ticket".split(),
    "technology": "laptop software robot chip code server gadget battery screen network cloud sensor".split(),
    "pets": "puppy kitten leash aquarium parrot hamster collar vet grooming paw treat litter".split(),
    "fashion": "dress runway denim jacket designer sneaker silk boutique scarf heels tailor collection".split(),
    "gaming": "console quest level controller arcade boss multiplayer pixel joystick raid loot speedrun".split(),
    "space": "rocket orbit galaxy astronaut planet telescope comet nebula satellite launch moon crater".split(),
    "finance": "stock market budget savings invest bank dividend crypto loan portfolio tax interest".split(),
    "fitness": "workout gym squat cardio protein yoga marathon stretch dumbbell sprint trainer muscle".split(),
    "comedy": "joke prank sketch laugh parody standup blooper sitcom clown punchline satire gag".split(),
    "wildlife": "lion safari elephant jungle eagle wolf savanna tiger migration herd predator zebra".split(),
    "cars": "engine racing drift garage turbo sedan tire horsepower rally convertible motor pitstop".split(),
    "history": "empire castle ancient war pharaoh medieval dynasty ruins knight revolution archive relic".split(),
    "painting": "canvas brush watercolor portrait gallery easel sketchbook mural palette oil abstract ink".split(),
    "cinema": "director premiere screenplay actor trailer studio camera sequel festival scene plot reel".split(),
    "science": "laboratory experiment molecule physics theory microscope chemistry atom research data cell".split(),
    "gardening": "seeds compost tomato greenhouse shovel bloom orchard soil tulip harvest hedge sprout".split(),
    "ocean": "reef dolphin surf tide coral diver whale sailboat lagoon wave shark harbor".split(),
    "mountains": "summit climber glacier trail peak avalanche cabin ridge altitude hiking rope valley".split(),
    "dance": "ballet salsa choreography tango stage hiphop waltz rehearsal costume spin partner tempo".split(),
    "books": "novel author chapter library poetry bookstore fiction reader manuscript sequel bestseller prose".split(),
    "weather": "storm thunder forecast rainbow hurricane snowfall breeze drought lightning cloudburst frost fog".split(),
}
ADJECTIVES = ("amazing quiet wild golden tiny secret epic cozy bright strange classic modern hidden "
              "lucky brave simple grand rapid gentle bold").split()
TEMPLATES = (
    "{A} look at {w0} and {w1}, with {w2} along the way.",
    "Everything about {w0}: {w1}, {w2} and {a} {w3}.",
    "How {a} {w0} changed the world of {w1}.",
    "Tips on {w0}, {w1} and {w2} for {a} weekend.",
)
SHAPES = ("circles", "squares", "triangles", "hstripes", "vstripes", "rings", "dots", "diagonals")
NOISE_WORD_SHARE = 0.15  # share of description words taken from another topic: content is noisy


def topic_vocabulary(topic: int) -> tuple[str, list[str]]:
    """(category name, words) of a topic; beyond the 24 themes, topics mix two themes."""
    names = list(THEMES)
    first = names[topic % len(names)]
    if topic < len(names):
        return first, THEMES[first]
    second = names[(topic * 7 + 3) % len(names)]
    return f"{first}-{second}", THEMES[first][:6] + THEMES[second][6:]


@dataclass
class SyntheticWorld:
    """Items, users, events and ground truth of one world (media rendered by :func:`render_media`)."""

    items: pd.DataFrame         # item_id, title, description, tags, category
    events: pd.DataFrame        # user_id, item_id, timestamp, click, like
    ground_truth: pd.DataFrame  # item_id, topic, business, introduced_at, popularity, quality, marked
    users: pd.DataFrame         # user_id, business, activity


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per part, so e.g. changing the event count leaves items unchanged."""
    parts = ("items", "text", "users", "events", "media")
    return {name: np.random.default_rng(s) for name, s in zip(parts, np.random.SeedSequence(seed).spawn(len(parts)))}


def generate_world(cfg: SyntheticConfig, seed: int, show_progress: bool = True) -> SyntheticWorld:
    """Sample a world of ``cfg.n_items`` items, ``cfg.n_users`` users, ``cfg.n_events`` events."""
    if min(cfg.n_items, cfg.n_users, cfg.n_topics, cfg.n_business) < 1 or cfg.n_events < 0:
        from qarm.errors import ConfigError

        raise ConfigError("data.synthetic: n_items, n_users, n_topics, n_business must be >= 1, n_events >= 0")
    rng = _streams(seed)
    gt = _sample_items(cfg, rng["items"])
    items = _item_text(gt["topic"].to_numpy(), gt["business"].to_numpy(), gt["marked"].to_numpy(), rng["text"])
    items.insert(0, "item_id", gt["item_id"].to_numpy())
    users = _sample_users(cfg, rng["users"])
    events = _sample_events(cfg, gt, users, rng["events"], show_progress)
    return SyntheticWorld(items, events, gt, users)


def _sample_items(cfg: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_items
    topic = rng.integers(0, cfg.n_topics, size=n)
    agree = rng.random(n) < cfg.topic_business_agreement
    business = np.where(agree, topic % cfg.n_business, rng.integers(0, cfg.n_business, size=n))
    rank = rng.permutation(n) + 1
    popularity = rank.astype(np.float64) ** -cfg.popularity_exponent
    quality = rng.normal(0.0, 0.5, size=n)
    launch = rng.random(n) < LAUNCH_SHARE
    intro_period = np.where(launch, 0, rng.integers(1, N_PERIODS, size=n))
    introduced_at = START_TS + intro_period * (DURATION_S // N_PERIODS)
    marked = rng.random(n) < cfg.business_mark_share  # content carries the business cluster's mark
    return pd.DataFrame({"item_id": np.arange(1, n + 1, dtype=np.int64), "topic": topic.astype(np.int64),
                         "business": business.astype(np.int64), "introduced_at": introduced_at.astype(np.int64),
                         "popularity": popularity / popularity.sum(), "quality": quality, "marked": marked})


# made-up studio names (no pretrained meaning): the business mark in text
STUDIO_SYLLABLES = ("vor", "qel", "zan", "trix", "mol", "dur", "fen", "kip", "lax", "brun", "sor", "yat")


def studio_name(business: int) -> str:
    """A pseudo-word naming business cluster ``business`` (two syllables, distinct per cluster)."""
    n = len(STUDIO_SYLLABLES)
    a, b = divmod(business % (n * n), n)
    return STUDIO_SYLLABLES[a] + STUDIO_SYLLABLES[(a + b + 1) % n] + (str(business // (n * n)) if business >= n * n else "")


def _topic_words(n_topics_total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(category names [T], words [T, W] padded with "", word counts [T]) for vectorised text assembly."""
    vocab = [topic_vocabulary(t) for t in range(n_topics_total)]
    width = max(len(w) for _, w in vocab)
    words = np.full((n_topics_total, width), "", dtype=object)
    for t, (_, w) in enumerate(vocab):
        words[t, :len(w)] = w
    return (np.asarray([c for c, _ in vocab], dtype=object), words,
            np.asarray([len(w) for _, w in vocab], dtype=np.int64))


def _item_text(topic: np.ndarray, business: np.ndarray, marked: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Title, description, tags, category per item from its topic's words (plus some noise words);
    marked items carry their business' studio name as a last tag. Vectorised: one draw per field."""
    n = len(topic)
    n_topics_total = max(int(topic.max()) + 1, len(THEMES)) if n else 1
    cats, words, lengths = _topic_words(n_topics_total)
    size = lengths[topic]  # words of each item's topic

    def word_index(count: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.minimum((rng.random(shape) * count).astype(np.int64), count - 1)

    # four description words: the topic's, or (NOISE_WORD_SHARE) a random topic's
    noise = rng.random((n, 4)) < NOISE_WORD_SHARE
    src_topic = np.where(noise, rng.integers(0, n_topics_total, size=(n, 4)), topic[:, None])
    pick = words[src_topic, word_index(lengths[src_topic], (n, 4))]
    adj = np.asarray(ADJECTIVES, dtype=object)[rng.integers(0, len(ADJECTIVES), size=n)]
    t0 = word_index(size, (n,))
    t1 = (t0 + 1 + word_index(size - 1, (n,))) % size  # two distinct title words
    title = pd.Series(adj + " " + words[topic, t0] + " " + words[topic, t1]).str.title()
    article = np.where(pd.Series(adj).str[0].isin(list("aeiou")).to_numpy(), "an", "a")
    a_adj = pd.Series(article + " " + adj)
    A_adj = a_adj.str.capitalize()
    w = [pd.Series(pick[:, j]) for j in range(4)]
    forms = [A_adj + " look at " + w[0] + " and " + w[1] + ", with " + w[2] + " along the way.",
             "Everything about " + w[0] + ": " + w[1] + ", " + w[2] + " and " + a_adj + " " + w[3] + ".",
             "How " + a_adj + " " + w[0] + " changed the world of " + w[1] + ".",
             "Tips on " + w[0] + ", " + w[1] + " and " + w[2] + " for " + a_adj + " weekend."]
    template = rng.integers(0, len(forms), size=n)
    desc = forms[0].where(template == 0, forms[1].where(template == 1, forms[2].where(template == 2, forms[3])))
    # three distinct tag words in vocabulary order
    keys = rng.random((n, words.shape[1]))
    keys[np.arange(words.shape[1])[None, :] >= size[:, None]] = np.inf  # padding is never a tag
    tag_idx = np.sort(np.argsort(keys, axis=1)[:, :3], axis=1)
    tw = words[topic[:, None], tag_idx]
    tags = pd.Series(tw[:, 0] + ", " + tw[:, 1] + ", " + tw[:, 2])
    studios = np.asarray([studio_name(b) for b in range(int(business.max()) + 1 if n else 0)], dtype=object)
    if n:
        tags = tags.where(~marked, tags + ", " + pd.Series(studios[business]))
    return pd.DataFrame({"title": title.to_numpy(object), "description": desc.to_numpy(object),
                         "tags": tags.to_numpy(object), "category": cats[topic]})


def _sample_users(cfg: SyntheticConfig, rng: np.random.Generator) -> pd.DataFrame:
    business = rng.integers(0, cfg.n_business, size=cfg.n_users)
    activity = rng.lognormal(0.0, 1.0, size=cfg.n_users)
    return pd.DataFrame({"user_id": np.arange(1, cfg.n_users + 1, dtype=np.int64),
                         "business": business.astype(np.int64), "activity": activity / activity.sum()})


def _sample_events(cfg: SyntheticConfig, gt: pd.DataFrame, users: pd.DataFrame, rng: np.random.Generator,
                   show_progress: bool) -> pd.DataFrame:
    n = cfg.n_events
    n_items = len(gt)
    period_len = DURATION_S // N_PERIODS
    ts = np.sort(rng.integers(0, DURATION_S, size=n))
    period = np.minimum(ts // period_len, N_PERIODS - 1)
    user_row = rng.choice(len(users), size=n, p=users["activity"].to_numpy())
    user_business = users["business"].to_numpy()[user_row]
    focused = rng.random(n) < FOCUS
    intro_period = (gt["introduced_at"].to_numpy() - START_TS) // period_len
    item_business = gt["business"].to_numpy()
    pop = gt["popularity"].to_numpy()
    n_groups = cfg.n_business + 1  # per period: group 0 explores, group b+1 is business cluster b
    key = period * n_groups + np.where(focused, user_business + 1, 0)
    # items grouped by business cluster: a cluster's draw only touches its own items
    by_business = np.argsort(item_business, kind="stable")
    bounds = np.searchsorted(item_business[by_business], np.arange(cfg.n_business + 1))
    cdfs: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def cdf(k: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(cumulative weights, item rows they index or None = all items) of group key ``k``."""
        if k not in cdfs:
            p, g = divmod(int(k), n_groups)
            age = p - intro_period  # available items by popularity, new ones boosted
            w = np.where(age >= 0, pop * (1.0 + NOVELTY_BOOST * np.exp(-np.maximum(age, 0) / 2.0)), 0.0)
            rows = None
            if g > 0:
                members = by_business[bounds[g - 1]:bounds[g]]
                if w[members].sum() > 0:  # a cluster with nothing available yet: explore
                    w, rows = w[members], members
            cdfs[k] = (np.cumsum(w), rows)
        return cdfs[k]

    item_row = np.empty(n, dtype=np.int64)

    def draw(idx: np.ndarray, desc: str) -> None:
        """Draw items for events ``idx`` from their (period, group) distributions, group by group."""
        order = np.argsort(key[idx], kind="stable")  # one sort instead of a scan per group
        groups, starts = np.unique(key[idx][order], return_index=True)
        ends = np.append(starts[1:], len(idx))
        u = rng.random(len(idx))
        for k, a, b in tqdm(list(zip(groups, starts, ends)), desc=desc, disable=not show_progress, leave=False):
            c, rows = cdf(k)
            pos = np.minimum(np.searchsorted(c, u[a:b] * c[-1], side="right"), len(c) - 1)
            item_row[idx[order[a:b]]] = pos if rows is None else rows[pos]

    draw(np.arange(n), "synthetic events")
    # A feed rarely shows a user the same item twice: redraw repeats (the later ones) a few times;
    # what is left are heavy users who exhausted their cluster's available items.
    # Only the users of the events just redrawn can have repeats in the next round, so each round
    # looks at their events alone (same result as the whole table: a repeat is within one user):
    # the rounds after the first cost O(those events), not O(all events) each.
    scope = np.arange(n)
    for _ in range(DEDUP_ROUNDS):
        repeat = scope[pd.Series(user_row[scope] * n_items + item_row[scope]).duplicated().to_numpy()]
        if not len(repeat):
            break
        draw(repeat, "redrawing repeats")
        scope = np.flatnonzero(np.isin(user_row, np.unique(user_row[repeat])))
    match = (item_business[item_row] == user_business).astype(np.float64)
    quality = gt["quality"].to_numpy()[item_row]
    click = rng.random(n) < 1.0 / (1.0 + np.exp(-(-0.6 + 1.6 * match + quality)))
    like = click & (rng.random(n) < 1.0 / (1.0 + np.exp(-(-1.2 + 1.0 * match + 1.0 * quality))))
    return pd.DataFrame({"user_id": users["user_id"].to_numpy()[user_row], "item_id": gt["item_id"].to_numpy()[item_row],
                         "timestamp": (START_TS + ts).astype(np.int64), "click": click.astype(np.int8),
                         "like": like.astype(np.int8)})


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_image(topic: int, n_topics: int, size: int, rng: np.random.Generator, badge: int | None = None,
               n_business: int = 1) -> bytes:
    """A PNG: topic hue background, topic shape family in a contrasting hue, item-level jitter; with
    ``badge`` (a business cluster) a small square of that cluster's colour in the bottom-right corner."""
    from PIL import Image, ImageDraw

    hue = topic / max(n_topics, 1) + rng.normal(0, 0.02)
    bg = _hsv(hue, 0.35 + 0.2 * rng.random(), 0.75 + 0.2 * rng.random())
    fg = _hsv(hue + 0.5 + 0.1 * (topic % 3), 0.8, 0.35 + 0.3 * rng.random())
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    shape = SHAPES[topic % len(SHAPES)]
    s = size
    for _ in range(int(rng.integers(2, 6))):
        x, y = (rng.random(2) * s).tolist()
        r = s * (0.08 + 0.12 * rng.random())
        if shape == "circles":
            d.ellipse([x - r, y - r, x + r, y + r], fill=fg)
        elif shape == "squares":
            d.rectangle([x - r, y - r, x + r, y + r], fill=fg)
        elif shape == "triangles":
            d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fg)
        elif shape == "hstripes":
            d.rectangle([0, y - r / 3, s, y + r / 3], fill=fg)
        elif shape == "vstripes":
            d.rectangle([x - r / 3, 0, x + r / 3, s], fill=fg)
        elif shape == "rings":
            d.ellipse([x - r, y - r, x + r, y + r], outline=fg, width=max(1, s // 24))
        elif shape == "dots":
            for k in range(4):
                d.ellipse([x + k * r / 2 - 2, y - 2, x + k * r / 2 + 2, y + 2], fill=fg)
        else:
            d.line([(x - r, y - r), (x + r, y + r)], fill=fg, width=max(1, s // 16))
    if badge is not None:  # an eighth of the side: a small share of the pixels, easy to overlook
        b = max(2, s // 8)
        d.rectangle([s - b - 1, s - b - 1, s - 2, s - 2], fill=_hsv(badge / max(n_business, 1), 0.9, 0.9),
                    outline=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def synth_audio(topic: int, seconds: float, sample_rate: int, rng: np.random.Generator) -> bytes:
    """A mono 16-bit WAV: the topic's chord (root pitch and interval) with a topic tremolo, jittered."""
    n = max(1, int(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    root = 110.0 * 2 ** ((topic % 24) / 12.0) * (1 + rng.normal(0, 0.01))
    interval = (3, 4, 5, 7)[(topic // 3) % 4]
    tremolo = 1.0 + 0.5 * np.sin(2 * np.pi * (2 + topic % 5) * t)
    x = np.sin(2 * np.pi * root * t) + 0.6 * np.sin(2 * np.pi * root * 2 ** (interval / 12) * t)
    x = x * tremolo * np.exp(-t * (0.5 + rng.random()))
    x = x + 0.05 * rng.normal(size=n)
    pcm = (np.clip(x / np.abs(x).max(), -1, 1) * 0.8 * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def item_embeddings(world: SyntheticWorld, cfg: SyntheticConfig, seed: int, out: np.ndarray | None = None,
                    block: int = 65536) -> np.ndarray:
    """Item vectors float32 [n_items, cfg.embedding_dim], rows in item order, L2-normalised: the item's
    topic direction (length 1) + for marked items its business direction (``embedding_mark_weight``) +
    per-item noise (``embedding_noise``). Generated in blocks of ``block`` rows into ``out`` (e.g. a
    memory-mapped .npy), so a million items never need a second copy in memory."""
    d = cfg.embedding_dim
    rng = _streams(seed)["media"]
    gt = world.ground_truth
    n = len(gt)

    def directions(k: int) -> np.ndarray:
        v = rng.standard_normal((k, d), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    topics, business = directions(max(cfg.n_topics, 1)), directions(max(cfg.n_business, 1))
    out = np.empty((n, d), np.float32) if out is None else out
    topic, biz, marked = gt["topic"].to_numpy(), gt["business"].to_numpy(), gt["marked"].to_numpy()
    mark_w, noise_w = np.float32(cfg.embedding_mark_weight), np.float32(cfg.embedding_noise / np.sqrt(d))
    for s in range(0, n, block):
        e = slice(s, min(s + block, n))
        v = topics[topic[e]] + rng.standard_normal((e.stop - s, d), dtype=np.float32) * noise_w
        v[marked[e]] += mark_w * business[biz[e][marked[e]]]
        out[e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def render_media(world: SyntheticWorld, cfg: SyntheticConfig, seed: int, media_dir: Path,
                 show_progress: bool = True) -> pd.DataFrame:
    """Write ``images/<item_id>.png`` (and ``audio/<item_id>.wav``) under ``media_dir``, or with
    ``cfg.content == "embeddings"`` the item vectors ``item_embeddings.npy`` float32 [n_items, d] and
    ``item_embedding_ids.npy`` int64 [n_items] (rows in item id order, as items.parquet), for
    ``align.item_embeddings`` / ``align.item_embedding_ids``.

    The whole folder is swapped in at once: files go to a hidden temp folder beside it, which then
    replaces ``media_dir`` by rename, so a killed run leaves the old media or the new, never a mix
    (and no per-file fsync, which cost ~5 ms a file). Returns item_id, image, audio (absolute paths;
    audio None when ``cfg.with_audio`` is off; both None for embeddings).
    """
    rng = _streams(seed)["media"]
    media_dir = Path(media_dir).resolve()
    media_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in media_dir.parent.glob(f".{media_dir.name}.*.partial"):  # left by a run killed mid-render
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{media_dir.name}.", suffix=".partial", dir=media_dir.parent))
    try:
        ids = world.ground_truth["item_id"].to_numpy()
        if cfg.content == "embeddings":
            vectors = np.lib.format.open_memmap(tmp / "item_embeddings.npy", mode="w+", dtype=np.float32,
                                                shape=(len(ids), cfg.embedding_dim))
            item_embeddings(world, cfg, seed, out=vectors)
            vectors.flush()
            del vectors
            np.save(tmp / "item_embedding_ids.npy", ids.astype(np.int64))
            _swap_in(tmp, media_dir)
            return pd.DataFrame({"item_id": ids, "image": [None] * len(ids), "audio": [None] * len(ids)})
        if cfg.content != "media":
            from qarm.errors import ConfigError

            raise ConfigError(f"data.synthetic.content must be media or embeddings, got {cfg.content!r}")
        (tmp / "images").mkdir()
        if cfg.with_audio:
            (tmp / "audio").mkdir()
        topics = world.ground_truth["topic"].to_numpy()
        business = world.ground_truth["business"].to_numpy()
        marked = world.ground_truth["marked"].to_numpy()
        images, audios = [], []
        for item_id, topic, biz, mark in tqdm(list(zip(ids, topics, business, marked)), desc="synthetic media",
                                              disable=not show_progress, leave=False):
            badge = int(biz) if mark else None
            (tmp / "images" / f"{item_id}.png").write_bytes(
                draw_image(int(topic), cfg.n_topics, cfg.image_size, rng, badge=badge, n_business=cfg.n_business))
            images.append(str(media_dir / "images" / f"{item_id}.png"))
            if cfg.with_audio:
                (tmp / "audio" / f"{item_id}.wav").write_bytes(
                    synth_audio(int(topic), cfg.audio_seconds, cfg.audio_sample_rate, rng))
                audios.append(str(media_dir / "audio" / f"{item_id}.wav"))
            else:
                audios.append(None)
        _swap_in(tmp, media_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return pd.DataFrame({"item_id": ids, "image": images, "audio": audios})


def _swap_in(tmp: Path, media_dir: Path) -> None:
    """Replace ``media_dir`` by the finished folder ``tmp`` (two renames)."""
    os.sync()  # the renamed folder must hold data, not empty pages, after a crash
    old = media_dir.parent / f".{media_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if media_dir.exists():
        os.replace(media_dir, old)
    os.replace(tmp, media_dir)
    shutil.rmtree(old, ignore_errors=True)
