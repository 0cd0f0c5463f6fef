"""What the server computes with: the code stores, the aligned encoder with the frozen codebooks,
and the rankers, each loaded once and shared by every request.

``ServeModels`` is one run directory: its catalogue code store, encoder + code assigner, rankers and
item catalogue, plus its codebook version (``qarm.serve.store.codebook_version``). ``ServeState``
holds the current ``ServeModels`` and the writable item store (items added with ``POST /items``),
and swaps to another run without dropping a request: a request takes the models it started with
(``state.use()``) and finishes on them; the old run is closed once its last request is done.

Heavy parts load at startup (``ServeConfig.preload``) when the run has them; a run without the
align/quantize/train outputs still serves code lookups, and the endpoints that need the missing
part answer 503 naming the stage to run. Model calls go through one lock per run: two requests
never run torch at once (that would only oversubscribe the cores), and Hugging Face tokenizers are
not safe to share between threads.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from qarm.config import from_dict
from qarm.distributed import check_device
from qarm.errors import QarmError
from qarm.io import read_json, read_parquet
from qarm.lookup import IdIndex
from qarm.serve.config import ServeConfig
from qarm.serve.kv import CodeStore, CodeStoreError, open_code_store
from qarm.serve.media import BadInput, check_audio, check_image, decode_b64, resolve_inside
from qarm.serve.store import ItemStore, StoredItem, codebook_version, now, open_item_store

log = logging.getLogger("qarm.serve")


class Unavailable(QarmError):
    """A part of the run the request needs is missing (stage not run): HTTP 503."""


def load_serve_config(run_dir: str | Path) -> ServeConfig:
    """The ``serve`` section of ``RUN/config.json`` (defaults when the run has none)."""
    raw = read_json(Path(run_dir) / "config.json", default={}) or {}
    cfg = from_dict(ServeConfig, raw.get("serve", {}), "serve")
    check_device(cfg.device, "serve.device")
    return cfg


def _shown(ids: list[int]) -> str:
    return ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")


class ServeModels:
    """Catalogue code store, encoder + code assigner, rankers and the item catalogue of one run."""

    def __init__(self, run_dir: str | Path, cfg: ServeConfig) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise QarmError(f"run directory {self.run_dir} does not exist")
        self.cfg = cfg
        self.version = codebook_version(self.run_dir)
        self.lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.store: CodeStore = open_code_store(cfg.codes_store, self.run_dir)
        stored = getattr(self.store, "meta", {}).get("version")
        if cfg.codes_store and stored != self.version:
            self.store.close()
            raise CodeStoreError(
                f"{cfg.codes_store} holds codes of codebook version {stored or '(none recorded)'} "
                f"(run {getattr(self.store, 'meta', {}).get('run', '?')}), but {self.run_dir} has version "
                f"{self.version}: run qarm export-codes --run {self.run_dir} --to {cfg.codes_store}")
        self.catalog_ = self._read_catalog()
        summary = read_json(self.run_dir / "rank" / "summary.json", default={}) or {}
        self.variants_: list[str] = list(summary.get("variants", []))  # what the train stage trained
        self.default_variant_: str | None = cfg.rank_variant or summary.get("default_variant") or None
        self._encoder: Any = None
        self._assigner: Any = None
        self._rankers: dict[str, Any] = {}
        self._inflight = 0
        self._idle = threading.Condition()

    def _read_catalog(self) -> IdIndex | None:
        """The item ids of items.parquet, or None when the run has no items table."""
        path = self.run_dir / "items.parquet"
        if not path.exists():
            return None
        return IdIndex(read_parquet(path, columns=["item_id"])["item_id"].to_numpy(dtype=np.int64))

    # ------------------------------------------------------------------ loading

    def preload(self) -> None:
        """Load every part the run has; a part whose stage has not run is left for a 503 later."""
        has_encoder = (self.run_dir / "align").is_dir() and (self.run_dir / "quant").is_dir()
        has_ranker = (self.run_dir / "rank").is_dir()
        if has_encoder or has_ranker:  # a lookup-only run never imports torch: it starts in a second
            self.set_threads()
        if has_encoder:
            self.encoder_and_assigner()
        if has_ranker:
            self.ranker(None)

    def set_threads(self) -> None:
        """Apply ``torch_threads`` in the calling thread (OpenMP settings are per thread)."""
        import torch

        if torch.get_num_threads() != self.cfg.torch_threads:
            torch.set_num_threads(max(1, self.cfg.torch_threads))

    def encoder_and_assigner(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._encoder is None:
                for sub, stage in (("align", "align"), ("quant", "quantize")):
                    if not (self.run_dir / sub).is_dir():
                        raise Unavailable(f"this run has no {sub}/ (the '{stage}' stage has not run): "
                                          f"coding new items needs the aligned encoder and the frozen codebooks")
                from qarm.align.encoder import load_item_encoder
                from qarm.distributed import resolve_device
                from qarm.quant.assign import CodeAssigner

                self._assigner = CodeAssigner.load(self.run_dir)
                encoder = load_item_encoder(self.run_dir)
                device = resolve_device(self.cfg.device, "serve.device")
                if hasattr(encoder, "to"):
                    encoder.to(device)
                elif device.type != "cpu":
                    raise Unavailable(f"serve.device {self.cfg.device!r}: this encoder runs on the CPU only")
                self._encoder = encoder
                log.info("loaded aligned encoder and codebooks from %s (device %s)", self.run_dir, device)
        return self._encoder, self._assigner

    def ranker(self, variant: str | None) -> tuple[str, Any]:
        """(variant name, Ranker); ``None`` = ``serve.rank_variant``, else the train stage's default."""
        variant = variant or self.default_variant_
        key = variant or ""
        with self._load_lock:
            if key not in self._rankers:
                if not (self.run_dir / "rank").is_dir():
                    raise Unavailable("this run has no rank/ (the 'train' stage has not run): POST /rank needs it")
                if variant is not None and self.variants_ and variant not in self.variants_:
                    raise BadInput(f"ranker variant {variant!r} was not trained in this run; "
                                   f"trained: {', '.join(self.variants_)}", 404)
                from qarm.rank.predict import load_ranker

                self._rankers[key] = load_ranker(self.run_dir, variant)
                log.info("loaded ranker %s from %s", variant or "(default)", self.run_dir)
        ranker = self._rankers[key]
        return str(getattr(ranker, "variant", variant or "default")), ranker

    # ------------------------------------------------------------------ in-flight requests

    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def _exit(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def retire(self, timeout: float = 600.0) -> None:
        """Wait until no request uses this run any more (or ``timeout``), then close its store."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight > 0 and time.monotonic() < deadline:
                self._idle.wait(timeout=1.0)
        self.close()
        log.info("retired run %s (version %s)", self.run_dir, self.version)

    # ------------------------------------------------------------------ requests

    def in_catalogue(self, ids: list[int]) -> np.ndarray:
        """bool [len(ids)]: the id is an item of this run's items.parquet."""
        if self.catalog_ is None:
            raise Unavailable("this run has no items.parquet (the 'prepare' stage has not run)")
        return self.catalog_.contains(np.asarray(ids, dtype=np.int64))

    def embed(self, items: list[Any]) -> dict[str, np.ndarray]:
        """``items``: validated ``NewItem``s -> {"emb_aligned.npy": float32 [n, d], "emb_raw.npy": float32
        [n, d_raw]}, request order. Call under ``self.lock``."""
        encoder, _ = self.encoder_and_assigner()
        with tempfile.TemporaryDirectory(prefix="qarm-serve-") as tmp:
            frame = self._items_frame(items, Path(tmp))
            self.set_threads()
            # one pass through the pretrained towers gives both embeddings (as encode / encode_raw do)
            from qarm.align.train import embed_rows

            store = encoder.store(frame)
            out = {"emb_aligned.npy": np.asarray(embed_rows(encoder.model, store), dtype=np.float32),
                   "emb_raw.npy": np.asarray(store.raw, dtype=np.float32)}
        for name, emb in out.items():
            if emb.shape[0] != len(items):
                raise RuntimeError(f"encoder returned {emb.shape[0]} {name} rows for {len(items)} items")
        return out

    def code(self, items: list[Any]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Encode and assign: (vq int32 [n, K], rq int32 [n, L], dense name -> float32 [n, d])."""
        _, assigner = self.encoder_and_assigner()
        with self.lock:
            dense = self.embed(items)
            # the codebooks were fitted on the aligned embedding unless quantize.embedding said raw
            emb = dense[getattr(assigner, "embedding", "emb_aligned.npy")]
            vq, rq = assigner.assign(emb, item_ids=self._pool_ids(items, assigner))
        return np.asarray(vq), np.asarray(rq), dense

    def encode_items(self, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """``items``: validated ``NewItem``s -> (vq int32 [n, K], rq int32 [n, L]), request order."""
        vq, rq, _ = self.code(items)
        return vq, rq

    def ingest(self, items: list[Any], overwrite: bool, item_store: ItemStore) -> tuple[list[StoredItem], list[bool]]:
        """Code ``items`` (each with an ``item_id``) and write them to ``item_store`` as one batch;
        returns (entries written, whether each id had an entry before). Catalogue ids need
        ``overwrite``: refused with 409 otherwise, before anything is encoded."""
        ids = [int(it.item_id) for it in items]
        in_cat = self.in_catalogue(ids)
        if in_cat.any() and not overwrite:
            taken = [i for i, c in zip(ids, in_cat) if c]
            raise BadInput(f"{len(taken)} item id(s) belong to this run's catalogue: {_shown(taken)}; send "
                           f"\"overwrite\": true to replace their codes (they then rank as new items)", 409)
        before = item_store.get_many(ids)  # an unreachable store fails here, before the encoder runs
        vq, rq, dense = self.code(items)
        t = now()
        entries = [StoredItem(i, vq[j].tolist(), rq[j].tolist(), self.version, str(self.run_dir),
                              {k: v[j] for k, v in dense.items()}, bool(in_cat[j]), t)
                   for j, i in enumerate(ids)]
        item_store.put_many(entries)  # one transaction: a failure raises CodeStoreError (503), nothing written
        return entries, [i in before for i in ids]

    def resolve(self, ids: list[int], item_store: ItemStore) -> tuple[dict[int, StoredItem], list[int], dict[int, str]]:
        """Which of ``ids`` the ranker can score: (ingested entries of this version by id, unknown ids
        in request order, stale: id -> version of an entry coded by other codebooks)."""
        uniq = list(dict.fromkeys(ids))
        entries = item_store.get_many(uniq) if uniq else {}
        fresh = {i: e for i, e in entries.items() if e.version == self.version}
        stale = {i: e.version for i, e in entries.items() if e.version != self.version}
        known = self.in_catalogue(uniq) if uniq else np.zeros(0, bool)
        unknown = [i for i, k in zip(uniq, known) if not k and i not in fresh]
        return fresh, unknown, stale

    def extra_items(self, entries: dict[int, StoredItem], ranker: Any) -> dict[int, Any]:
        """Ingested entries -> the ranker's ``extra_items`` (codes, and the dense vectors it reads)."""
        from qarm.rank.predict import ItemContent

        needs = set(getattr(ranker, "needs_dense", set()) or ())
        out = {}
        for i, e in entries.items():
            missing = needs - set(e.dense)
            if missing:
                raise BadInput(f"item {i} was stored without {', '.join(sorted(missing))}, which ranker variant "
                               f"{ranker.variant!r} reads: re-ingest it", 409)
            out[i] = ItemContent(vq=np.asarray(e.vq, np.int64), rq=np.asarray(e.rq, np.int64),
                                 dense={k: np.asarray(e.dense[k], np.float32) for k in needs})
        return out

    def rank(self, history: list[int], candidates: list[int], user_id: int | None, variant: str | None,
             item_store: ItemStore) -> tuple[str, dict[str, np.ndarray]]:
        """Scores of ``candidates`` (catalogue or ingested ids) for a user with ``history``."""
        fresh, unknown, stale = self.resolve(list(candidates) + list(history), item_store)
        if unknown:
            cand = set(candidates)
            for name, part in (("candidates", [i for i in unknown if i in cand]),
                               ("history", [i for i in unknown if i not in cand])):
                if part:
                    old = [i for i in part if i in stale]
                    why = (f"; {len(old)} of them were coded by other codebooks (version "
                           f"{stale[old[0]]}, this server serves {self.version}): re-ingest them") if old else ""
                    raise BadInput(f"{name}: {len(part)} item id(s) neither in this run's catalogue nor ingested: "
                                   f"{_shown(part)}{why}; POST /items adds new items", 404)
        name, ranker = self.ranker(variant)
        extra = self.extra_items(fresh, ranker) if fresh else None
        with self.lock:
            self.set_threads()
            if extra:
                scores = ranker.score(list(history), list(candidates), user_id, extra_items=extra)
            else:
                scores = ranker.score(list(history), list(candidates), user_id)
        return name, scores

    def lookup(self, item_id: int, item_store: ItemStore) -> tuple[list[int], list[int]] | None:
        """Codes of ``item_id``: an ingested entry of this version first, then the catalogue's."""
        entry = item_store.get_many([item_id]).get(item_id)
        if entry is not None and entry.version == self.version:
            return entry.vq, entry.rq
        codes = self.store.get(item_id)
        if codes is None and entry is not None:
            raise BadInput(f"item {item_id} was coded by codebook version {entry.version} (run {entry.run}); this "
                           f"server serves version {self.version}: re-ingest it with POST /items", 404)
        return codes

    @staticmethod
    def _pool_ids(items: list[Any], assigner: Any) -> np.ndarray:
        """Item ids for VQ's self-exclusion: an item sent with the id of a pool item is that item (new
        content for it), so it skips itself as at quantize time; an item without an id gets an id
        outside the pool."""
        pool = np.asarray(getattr(getattr(assigner, "vq", None), "pool_ids_", np.zeros(0, np.int64)))
        outside = int(pool.min()) - 1 if len(pool) and int(pool.min()) > -(2**63) else -(2**63)
        return np.array([outside if it.item_id is None else it.item_id for it in items], dtype=np.int64)

    def _items_frame(self, items: list[Any], tmp: Path) -> pd.DataFrame:
        """Validated request items -> a DataFrame in the items schema, media written under ``tmp``."""
        from qarm.data.items import default_text

        rows = []
        for i, it in enumerate(items):
            where = f"items[{i}]"
            rows.append({
                "item_id": it.item_id,
                "title": it.title.strip(), "description": it.description.strip(),
                "tags": it.tags.strip(), "category": it.category.strip(), "text": it.text.strip(),
                "image": self._media(it.image_b64, it.image_path, "image", where, tmp / f"{i}-image"),
                "audio": self._media(it.audio_b64, it.audio_path, "audio", where, tmp / f"{i}-audio"),
            })
        df = pd.DataFrame(rows)
        composed = default_text(df)
        df["text"] = df["text"].where(df["text"] != "", composed)
        df["has_text"] = df["text"].str.strip() != ""
        df["has_image"] = df["image"].notna()
        df["has_audio"] = df["audio"].notna()
        # a served item is new by definition: never in training, held out of nothing
        df["holdout"] = False
        df["cold"] = True
        df["train_count"] = np.zeros(len(df), dtype=np.int64)
        df["freq_bucket"] = "0"
        return df

    def _media(self, b64: str | None, path: str | None, kind: str, where: str, stem: Path) -> str | None:
        """Check one image/audio and return a file path the encoder can read (None when absent)."""
        cfg = self.cfg
        if b64 is None and path is None:
            return None
        if b64 is not None:
            field = f"{where}.{kind}_b64"
            data = decode_b64(b64, field, cfg.max_media_bytes)
            real = None
        else:
            field = f"{where}.{kind}_path"
            real = resolve_inside(path, cfg.media_root, field, cfg.max_media_bytes)
            data = real.read_bytes()
        if kind == "image":
            suffix = check_image(data, field, cfg.max_image_pixels)
        else:
            suffix, cut = ".wav", check_audio(data, field, self._audio_seconds())
            if cut is not data:  # a long clip: hand the encoder the part it reads
                data, real = cut, None
        if real is not None:
            return str(real)
        out = stem.with_suffix(suffix)
        out.write_bytes(data)
        return str(out)

    def _audio_seconds(self) -> float | None:
        """Seconds of audio the encoder reads (its spec: [sample_rate, seconds, n_mels]); None = unknown."""
        try:
            return float(self._encoder.spec["audio"][1])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        """What is loaded: for /health."""
        return {"codes_store": self.store.url, "n_codes": len(self.store), "version": self.version,
                "encoder": self._encoder is not None,
                "rankers": sorted(k or "default" for k in self._rankers), "variants": self.variants_}

    def close(self) -> None:
        self.store.close()


class ServeState:
    """The run being served (swappable) and the item store every run shares."""

    def __init__(self, run_dir: str | Path, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.run_arg = Path(run_dir)  # as given: a symlink is re-resolved on each reload
        self.current = ServeModels(run_dir, cfg)
        self.items: ItemStore = open_item_store(cfg.codes_store)
        self._lock = threading.Lock()          # guards ``current`` against a swap mid-read
        self._swap_lock = threading.Lock()     # one swap at a time
        self.swaps: list[dict[str, Any]] = []

    @contextmanager
    def use(self) -> Iterator[ServeModels]:
        """The current run for one request; a swap during the request leaves it on this run."""
        with self._lock:
            models = self.current
            models._enter()
        try:
            yield models
        finally:
            models._exit()

    def swap(self, run_dir: str | Path | None = None) -> dict[str, Any]:
        """Load ``run_dir`` (default: ``--run`` again, e.g. a symlink now pointing elsewhere) fully, then
        make it current. Requests already running finish on the old run, which closes after them.
        A run that fails to load leaves the old one serving (the error propagates)."""
        target = Path(run_dir) if run_dir is not None else self.run_arg
        with self._swap_lock:
            t0 = time.perf_counter()
            new = ServeModels(target.resolve(), self.cfg)
            try:
                if self.cfg.preload:
                    new.preload()
            except BaseException:
                new.close()
                raise
            with self._lock:
                old, self.current = self.current, new
            threading.Thread(target=old.retire, name="qarm-retire", daemon=True).start()
            info = {"run": str(new.run_dir), "version": new.version, "previous_run": str(old.run_dir),
                    "previous_version": old.version, "load_seconds": round(time.perf_counter() - t0, 3)}
            self.swaps.append(info)
            log.info("now serving %s (version %s; was %s)", new.run_dir, new.version, old.version)
            return info

    def close(self) -> None:
        self.current.close()
        self.items.close()
