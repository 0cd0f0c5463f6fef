"""Helpers of the align tests (importable from test modules: pytest puts this folder on sys.path)."""

from __future__ import annotations

import shutil
from pathlib import Path

from qarm.align.weights import minilm_dir

TEST_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def copy_inputs(src: Path, dst: Path, with_cache: bool = False) -> Path:
    """Copy what the align stage reads (and optionally its feature cache) into a new run dir."""
    dst.mkdir(parents=True)
    for name in ("items.parquet", "events.parquet", "pairs.parquet"):
        shutil.copy2(src / name, dst / name)
    shutil.copytree(src / "pairs", dst / "pairs")
    if (src / "data" / "ground_truth.parquet").exists():  # media stay where items.parquet points
        (dst / "data").mkdir()
        shutil.copy2(src / "data" / "ground_truth.parquet", dst / "data" / "ground_truth.parquet")
    if with_cache and (src / "align" / "cache").exists():
        shutil.copytree(src / "align" / "cache", dst / "align" / "cache")
    return dst


def _save_tokenizer(dest: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(dest)


def make_tiny_bert(dest: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, saved as an HF folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(dest)
    _save_tokenizer(dest)
    return dest


def make_tiny_clip(dest: Path) -> Path:
    """A tiny CLIP (joint image-text model) with random weights, 32 px images, MiniLM's tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                                  "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},  # BERT's [CLS]/[SEP]
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                     projection_dim=24)
    CLIPModel(cfg).save_pretrained(dest)
    _save_tokenizer(dest)
    return dest
