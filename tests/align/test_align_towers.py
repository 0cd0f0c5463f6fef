"""Pretrained towers: built-in weights, HF folders, user weights, joint CLIP-like models, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qarm.align.inputs import build_store, decode_images, read_content
from qarm.align.towers import load_image_tower, load_joint_towers, load_text_tower
from qarm.align.weights import minilm_dir
from qarm.errors import DataError, QarmError

TEXTS = ["A cowboy doll is threatened by a new spaceman toy.", "Two astronauts are stranded on Mars.",
         "A toy cowboy and a space ranger become friends."]


@pytest.fixture(scope="module")
def minilm():
    return load_text_tower("all-minilm-l6-v2", 128)


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ours = minilm(**minilm.tokenize(TEXTS)).numpy()
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    sims = ours @ ours.T
    assert sims[0, 2] > sims[0, 1]  # the two toy stories are closer than toy vs Mars


def test_minilm_extraction_is_cached_once(tmp_path):
    first = minilm_dir()
    assert (first / "model.safetensors").is_file() and minilm_dir() == first
    assert not list(first.parent.glob(f".{first.name}.*"))  # no half-extracted temp folder left


def test_text_tower_from_local_folder(tiny_bert):
    tower = load_text_tower(str(tiny_bert), 16)
    out = tower(**tower.tokenize(["hello world", ""]))
    assert out.shape == (2, 32)
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_unknown_text_model_names_what_was_looked_for(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(QarmError, match="no folder at .*no-such-model"):
        load_text_tower(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(QarmError, match="has no config.json"):
        load_text_tower(str(tmp_path / "empty"))


def test_builtin_image_tower_features():
    tower = load_image_tower("efficientnet-lite0", "", 64)
    pixels = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert tower(pixels).shape == (2, 1280)


def test_user_weights_and_dimension_mismatch(tmp_path):
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    state = EfficientNet.from_name("efficientnet-lite0").state_dict()
    good = tmp_path / "lite0.pth"
    torch.save(state, good)
    tower = load_image_tower("efficientnet-lite0", str(good), 32)
    assert torch.equal(tower.backbone._conv_stem.weight, state["_conv_stem.weight"])
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(QarmError, match=r"dimension mismatch .*_conv_stem.weight.*\(16, 3, 3, 3\)"):
        load_image_tower("efficientnet-lite0", str(bad), 32)
    with pytest.raises(QarmError, match="no file at"):
        load_image_tower("efficientnet-b0", str(tmp_path / "absent.pth"), 32)
    with pytest.raises(QarmError, match="has no built-in weights"):
        load_image_tower("efficientnet-b0", "", 32)


def test_unknown_image_model_and_missing_libraries(tmp_path):
    with pytest.raises(QarmError, match="unknown image model 'resnet-42'"):
        load_image_tower("resnet-42")
    with pytest.raises(QarmError, match="needs align.image_weights"):
        load_image_tower("timm:resnet18")
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(QarmError, match=r"needs the timm package \(pip install timm\)"):
            load_image_tower("timm:resnet18", str(weights))
    else:
        with pytest.raises(QarmError, match="parameters of 'timm:resnet18' are missing"):
            load_image_tower("timm:resnet18", str(weights))


def test_joint_clip_like_towers(tiny_clip):
    text, image, size = load_joint_towers(str(tiny_clip), 32)
    assert size == 32 and text.out_dim == image.out_dim == 24
    with torch.no_grad():
        t = text(**text.tokenize(TEXTS))
        v = image(torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8))
    assert t.shape == v.shape == (3, 24)
    with pytest.raises(QarmError, match="could not be loaded|no folder"):
        load_joint_towers(str(tiny_clip / "missing"))


def test_corrupt_image_keeps_item_and_is_counted(tmp_path, tiny_bert):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    items = pd.DataFrame({"item_id": [1, 2, 3], "text": ["a film", "   ", "another film"],
                          "image": [str(good), str(corrupt), None]})
    pixels, ok = decode_images(items["image"].tolist(), 32, progress=False)
    assert ok.tolist() == [True, False, False] and pixels.shape == (3, 3, 32, 32)
    content = read_content(items)
    assert content.counts["empty_text"] == 1 and content.counts["missing_image"] == 1
    towers = {"text": load_text_tower(str(tiny_bert), 16), "image": load_image_tower("efficientnet-lite0", "", 32)}
    store = build_store(content, towers, ["text", "image"], set(), 32, (16000, 1.0, 64), 8, progress=False)
    assert store.present.tolist() == [[True, True], [False, False], [True, False]]
    assert store.counts["corrupt_image"] == 1 and store.counts["items_without_content"] == 1
    assert store.raw.shape == (3, 32 + 1280) and np.isfinite(store.raw).all()
    with pytest.raises(DataError, match="column 'text'"):
        read_content(items.drop(columns=["text"]))
