"""What the encoder reads for a set of items: frozen tower features, live tower inputs, presence flags.

``ItemStore`` holds, for n items (rows of an items frame): the frozen features of each pretrained
tower (computed once; cached on disk under ``run/align/cache/`` keyed by tower spec and content),
token ids / pixels for towers that fine-tune, log-mel spectrograms for the audio CNN, and
``present`` bool [n, n_modalities]. A missing, empty or undecodable modality is never an error for
the item: it is marked absent (the fusion uses a learned placeholder) and counted.

Batch invariance: every tower runs on batches of a fixed shape (``batch_size`` rows, padded with
blank rows; a text padded to its own length bucket, ``token_bucket``: a multiple of 16 tokens), so
an item's feature bits are a function of its own content only, the same whichever items share its
batch, alone or in a catalogue (docs/determinism.md).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from qarm.align.audio import LogMel, logmel_stats, read_wav
from qarm.align.towers import image_to_array
from qarm.errors import DataError
from qarm.io import write_bytes


@dataclass
class ItemContent:
    """Validated content of n items. text: str [n]; image/audio: path or None [n]."""

    texts: list[str]
    images: list[str | None]
    audios: list[str | None]
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def digest(self, kind: str) -> str:
        """Hash of one modality's content (texts, or media paths): a feature-cache key."""
        values = {"text": self.texts, "image": self.images, "audio": self.audios}[kind]
        h = hashlib.sha256()
        for v in values:
            h.update(b"\0" if v is None else str(v).encode() + b"\1")
        return h.hexdigest()[:16]


def read_content(items: pd.DataFrame, file: str = "items") -> ItemContent:
    """Items frame (items schema; any subset of modalities) -> ItemContent, empty text counted.

    Needs column ``text`` (or ``title``); ``image``/``audio`` are optional; ``has_*`` flags, when
    present, switch a modality off for an item.
    """
    if "text" not in items.columns and "title" not in items.columns:
        raise DataError(f"missing column: the text tower reads 'text' (or 'title'); has "
                        f"{', '.join(map(str, items.columns))}", file=file, column="text")
    col = "text" if "text" in items.columns else "title"
    texts = [("" if _null(t) else str(t)).strip() for t in items[col].tolist()]
    if "has_text" in items.columns:
        texts = [t if bool(ok) else "" for t, ok in zip(texts, items["has_text"].tolist())]
    counts = {"empty_text": sum(1 for t in texts if not t)}

    def paths(name: str) -> list[str | None]:
        if name not in items.columns:
            return [None] * len(items)
        out = [None if _null(p) or not str(p).strip() else str(p) for p in items[name].tolist()]
        flag = f"has_{name}"
        if flag in items.columns:
            out = [p if bool(ok) else None for p, ok in zip(out, items[flag].tolist())]
        return out

    images, audios = paths("image"), paths("audio")
    counts["missing_image"] = sum(p is None for p in images)
    counts["missing_audio"] = sum(p is None for p in audios)
    return ItemContent(texts, images, audios, counts)


def _null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA


def decode_images(paths: list[str | None], size: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels [n, 3, size, size] (zeros where absent) and ok bool [n]; undecodable files are not ok."""
    pixels = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(tqdm(paths, desc="decode images", unit="img", disable=not progress, mininterval=2.0)):
        if p is None:
            continue
        try:
            pixels[i] = image_to_array(p, size)
            ok[i] = True
        except Exception:  # missing file, truncated JPEG, not an image: the item keeps its other modalities
            pass
    return pixels, ok


AUDIO_BATCH = 256  # log-mel rows per fixed-shape STFT batch
TOKEN_BUCKET = 16  # texts are padded to a multiple of this many tokens (their own length's bucket)


def token_bucket(lengths: np.ndarray, max_length: int) -> np.ndarray:
    """Padded width of each text: its token count rounded up to a multiple of TOKEN_BUCKET, capped at
    max_length. A function of the text alone, so grouping by it keeps features batch-invariant while
    short texts do not pay for max_length."""
    w = -(-np.maximum(np.asarray(lengths, dtype=np.int64), 1) // TOKEN_BUCKET) * TOKEN_BUCKET
    return np.minimum(w, max_length)


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x [n, ...] with zero rows appended up to ``rows`` (n <= rows): a fixed-shape batch."""
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], dtype=x.dtype)])


def decode_audio(paths: list[str | None], sample_rate: int, seconds: float, n_mels: int,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """float16 log-mel [n, n_mels, frames] (silence where absent) and ok bool [n]."""
    logmel = LogMel(sample_rate, n_mels)
    n_samples = int(round(sample_rate * seconds))
    wav = np.zeros((len(paths), n_samples), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    for i, p in enumerate(tqdm(paths, desc="decode audio", unit="clip", disable=not progress, mininterval=2.0)):
        if p is None:
            continue
        try:
            wav[i] = read_wav(p, sample_rate, seconds)
            ok[i] = True
        except Exception:  # wave.Error, EOFError, unsupported format: counted as corrupt
            pass
    out = [logmel(torch.from_numpy(pad_rows(wav[a:a + AUDIO_BATCH], AUDIO_BATCH))).numpy()[:len(wav[a:a + AUDIO_BATCH])]
           for a in range(0, len(paths), AUDIO_BATCH)]
    frames = 1 + n_samples // logmel.hop
    mel = np.concatenate(out) if out else np.zeros((0, n_mels, frames), dtype=np.float32)
    return mel.astype(np.float16), ok


@torch.no_grad()
def tower_features(tower, content: ItemContent, kind: str, image_size: int, batch_size: int,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features of one pretrained tower: float32 [n, out_dim] (zeros where absent), ok bool [n].

    Every forward pass has the shape [batch_size, ...] (blank rows pad the last batch; a text is
    padded to its own ``token_bucket`` and batched with texts of the same bucket), so the bits of a
    row never depend on the other rows.
    """
    n = len(content)
    feats = np.zeros((n, tower.out_dim), dtype=np.float32)
    if kind == "text":
        ok = np.array([bool(t) for t in content.texts], dtype=bool)
        rows = np.flatnonzero(ok)
        lengths = [len(x) for x in tower.tokenizer([content.texts[i] for i in rows], truncation=True,
                                                   max_length=tower.max_length)["input_ids"]]
        widths = token_bucket(np.array(lengths, dtype=np.int64), tower.max_length)
        groups = [(w, rows[widths == w]) for w in np.unique(widths)]
        bar = tqdm(total=len(rows), desc="text tower", unit="text", disable=not progress, mininterval=2.0)
        for w, grp in groups:
            for a in range(0, len(grp), batch_size):
                r = grp[a:a + batch_size]
                texts = [content.texts[i] for i in r]
                tok = tower.tokenize(texts + [""] * (batch_size - len(texts)), fixed=True, length=int(w))
                feats[r] = tower(**tok).numpy()[:len(r)]
                bar.update(len(r))
        bar.close()
        return feats, ok
    ok = np.zeros(n, dtype=bool)
    bar = tqdm(total=n, desc="image tower", unit="img", disable=not progress, mininterval=2.0)
    for a in range(0, n, batch_size):
        pixels, good = decode_images(content.images[a:a + batch_size], image_size, progress=False)
        ok[a:a + batch_size] = good
        if good.any():
            out = tower(torch.from_numpy(pad_rows(pixels[good], batch_size))).numpy()
            feats[a:a + batch_size][good] = out[:int(good.sum())]
        bar.update(len(good))
    bar.close()
    return feats, ok


def cached(path: Path | None, compute) -> dict[str, np.ndarray]:
    """Load the npz at ``path`` if present, else ``compute()`` -> dict of arrays, written atomically."""
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes(path, buf.getvalue())
    return arrays


@dataclass
class ItemStore:
    """Per-item encoder inputs. ``modalities``: order of the presence columns and fusion tokens.

    feats: modality -> float32 [n, d] frozen features (text/image); tokens: input_ids/attention_mask
    int64 [n, L] (live text tower); pixels: uint8 [n, 3, S, S] (live image tower); logmel: float16
    [n, n_mels, frames] (audio); present: bool [n, M]; raw: float32 [n, d_raw] L2-normalised.
    """

    modalities: list[str]
    present: np.ndarray
    feats: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: dict[str, np.ndarray] | None = None
    pixels: np.ndarray | None = None
    logmel: np.ndarray | None = None
    raw: np.ndarray | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.present)

    def batch(self, rows: np.ndarray, live: set[str], text_width: int | None = None) -> dict:
        """Tensors for ``rows``: each modality's tower input (live) or frozen feature, plus ``present``.

        Training trims a live text tower's padding to the batch's longest text; inference passes
        ``text_width`` (the rows' common ``token_bucket``) so the result is batch-invariant."""
        out: dict = {"present": torch.from_numpy(self.present[rows])}
        for m in self.modalities:
            if m == "audio":
                out[m] = torch.from_numpy(self.logmel[rows].astype(np.float32))
            elif m in live and m == "text":
                mask = self.tokens["attention_mask"][rows]
                width = text_width if text_width is not None else max(1, int(mask.sum(1).max()))
                out[m] = {"input_ids": torch.from_numpy(self.tokens["input_ids"][rows, :width]),
                          "attention_mask": torch.from_numpy(mask[:, :width])}
            elif m in live:
                out[m] = torch.from_numpy(self.pixels[rows])
            else:
                out[m] = torch.from_numpy(self.feats[m][rows])
        return out


def raw_embedding(store: ItemStore) -> np.ndarray:
    """Pre-alignment embedding: the L2-normalised concatenation of each modality's L2-normalised
    frozen feature (text tower, image tower, log-mel band statistics for audio), zeros where a
    modality is absent. Cosine of two raw embeddings = mean of their per-modality cosines
    (when both have all modalities). float32 [n, sum of frozen dims]."""
    blocks = []
    for j, m in enumerate(store.modalities):
        f = store.feats[m].astype(np.float32)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        blocks.append(np.where(store.present[:, j:j + 1], f, 0.0).astype(np.float32))
    raw = np.concatenate(blocks, axis=1)
    return (raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def build_store(content: ItemContent, towers: dict, modalities: list[str], live: set[str], image_size: int,
                audio_cfg: tuple[int, float, int], batch_size: int, cache_dir: Path | None = None,
                tower_keys: dict[str, str] | None = None, progress: bool = True,
                given: tuple[np.ndarray, np.ndarray] | None = None) -> ItemStore:
    """Compute (or load from ``cache_dir``) everything the encoder reads for these items.

    towers: modality -> frozen pretrained tower (text, image); tower_keys: modality -> spec string
    that, with the content hash, names the cache file. audio_cfg: (sample_rate, seconds, n_mels).
    given: (float32 [n, d], ok bool [n]) user-supplied embeddings, the frozen feature of modality
    ``given`` (``qarm.align.given``).
    """
    n = len(content)
    present = np.zeros((n, len(modalities)), dtype=bool)
    store = ItemStore(modalities, present, counts=dict(content.counts))
    for j, m in enumerate(modalities):
        if m == "given":
            if given is None:
                raise ValueError("modality 'given' needs the given embeddings")
            store.feats[m] = np.asarray(given[0], dtype=np.float32)
            present[:, j] = given[1]
            store.counts["missing_given"] = int((~given[1]).sum())
            continue
        key = f"{m}-{hashlib.sha256(((tower_keys or {}).get(m, '') + content.digest(m)).encode()).hexdigest()[:16]}"
        path = cache_dir / f"{key}.npz" if cache_dir is not None else None
        if m == "audio":
            arr = cached(path, lambda: dict(zip(("logmel", "ok"), decode_audio(content.audios, *audio_cfg, progress))))
            store.logmel = arr["logmel"]
            store.feats[m] = logmel_stats(store.logmel)
        else:
            arr = cached(path, lambda m=m: dict(zip(("feat", "ok"), tower_features(towers[m], content, m, image_size,
                                                                                   batch_size, progress))))
            store.feats[m] = arr["feat"]
        present[:, j] = arr["ok"]
    for m in ("image", "audio"):
        if m in modalities:
            given = np.array([p is not None for p in getattr(content, m + "s")], dtype=bool)
            store.counts[f"corrupt_{m}"] = int((given & ~present[:, modalities.index(m)]).sum())
    store.counts["items_without_content"] = int((~present.any(axis=1)).sum())
    if "text" in live:
        tok = towers["text"].tokenize([t if t else "" for t in content.texts], fixed=True)
        store.tokens = {k: v.numpy() for k, v in tok.items()}
    if "image" in live:
        store.pixels, _ = decode_images(content.images, image_size, progress)
    store.raw = raw_embedding(store)
    return store
