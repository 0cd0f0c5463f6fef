"""Pretrained towers (loaded frozen, in eval mode): text (any HF encoder), image (EfficientNet / timm / torchvision), joint (CLIP-like).

Every tower maps one modality's prepared input to a pooled feature vector:
``TextTower(input_ids, attention_mask) -> [b, out_dim]`` (mean pooling + L2 norm, as
sentence-transformers does), ``ImageTower(pixels uint8 [b, 3, S, S]) -> [b, out_dim]`` (global
average pool of the last feature map). Towers always run in eval mode, also while their top
blocks fine-tune: BatchNorm statistics and dropout stay fixed, so an item's feature never depends
on which other items share its batch (needed for exact DDP and resume equivalence).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qarm.align.weights import effnet_lite0_weights, minilm_dir
from qarm.errors import QarmError

BUILTIN_TEXT = {"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
EFFNET_NAMES = [f"efficientnet-b{i}" for i in range(9)] + [f"efficientnet-lite{i}" for i in range(5)]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)


class TextTower(nn.Module):
    """HF encoder + mean pooling over real tokens + L2 norm. out_dim = hidden size."""

    def __init__(self, hf: nn.Module, tokenizer, max_length: int) -> None:
        super().__init__()
        self.hf, self.tokenizer, self.max_length = hf, tokenizer, max_length
        self.out_dim = int(hf.config.hidden_size)

    def tokenize(self, texts: list[str], fixed: bool = False, length: int | None = None) -> dict[str, torch.Tensor]:
        """texts -> input_ids, attention_mask int64 [n, L]: L = longest (at most max_length), or
        exactly ``length`` (default max_length) with ``fixed``: the padded shape, hence an item's
        feature bits, then never depend on which texts share its batch (docs/determinism.md)."""
        if fixed:
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=length or self.max_length,
                                 return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def blocks(self) -> list[nn.Module]:
        return list(_largest_module_list(self.hf))

    def after_blocks(self) -> list[nn.Module]:
        return []


class ImageTower(nn.Module):
    """CNN backbone -> global average pool. Input uint8 pixels [b, 3, S, S]; normalised here."""

    def __init__(self, backbone: nn.Module, kind: str, mean: tuple, std: tuple, out_dim: int) -> None:
        super().__init__()
        self.backbone, self.kind, self.out_dim = backbone, kind, out_dim
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() - self.mean) / self.std
        if self.kind == "efficientnet":
            return self.backbone.extract_features(x).mean(dim=(2, 3))
        return self.backbone(x).flatten(1)

    def blocks(self) -> list[nn.Module]:
        if self.kind == "efficientnet":
            return list(self.backbone._blocks)
        return list(_largest_module_list(self.backbone)) or list(self.backbone.children())

    def after_blocks(self) -> list[nn.Module]:
        return [self.backbone._conv_head, self.backbone._bn1] if self.kind == "efficientnet" else []


class JointTextTower(nn.Module):
    """Text side of a CLIP-like model (``get_text_features``); L2-normalised projections."""

    def __init__(self, joint: nn.Module, tokenizer, max_length: int) -> None:
        super().__init__()
        self.joint, self.tokenizer, self.max_length = joint, tokenizer, max_length
        self.out_dim = int(joint.config.projection_dim)

    tokenize = TextTower.tokenize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.joint.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(_as_tensor(out), dim=-1)

    def blocks(self) -> list[nn.Module]:
        return list(_largest_module_list(self.joint.text_model))

    def after_blocks(self) -> list[nn.Module]:
        return [m for m in (getattr(self.joint.text_model, "final_layer_norm", None),
                            getattr(self.joint, "text_projection", None)) if m is not None]


class JointImageTower(nn.Module):
    """Image side of a CLIP-like model (``get_image_features``)."""

    def __init__(self, joint: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.joint = joint
        self.out_dim = int(joint.config.projection_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.joint.get_image_features(pixel_values=(pixels.float() - self.mean) / self.std)
        return F.normalize(_as_tensor(out), dim=-1)

    def blocks(self) -> list[nn.Module]:
        return list(_largest_module_list(self.joint.vision_model))

    def after_blocks(self) -> list[nn.Module]:
        return [m for m in (getattr(self.joint.vision_model, "post_layernorm", None),
                            getattr(self.joint, "visual_projection", None)) if m is not None]


def _as_tensor(out) -> torch.Tensor:
    # transformers 5 may return a model output object instead of the projected tensor
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("pooler_output", "text_embeds", "image_embeds"):
        val = getattr(out, attr, None)
        if isinstance(val, torch.Tensor):
            return val
    raise QarmError(f"joint model returned {type(out).__name__}; expected a tensor of projected features")


def _largest_module_list(module: nn.Module) -> nn.ModuleList:
    """The ModuleList holding most parameters: the transformer layers / CNN stages of a backbone."""
    best, best_n = nn.ModuleList(), -1
    for m in module.modules():
        if isinstance(m, nn.ModuleList):
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = m, n
    return best


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def _resolve_hf(name: str, what: str, builtin: set[str]) -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, local folder or None). Raises when a path-like name is missing."""
    if name in builtin:
        return str(minilm_dir()), minilm_dir()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise QarmError(f"{what} {name!r}: folder {path.resolve()} has no config.json "
                            "(expected a Hugging Face model folder, e.g. one written by save_pretrained)")
        return str(path), path
    if _looks_like_path(name):
        raise QarmError(f"{what} {name!r} not found: no folder at {path.resolve()}")
    return name, None


def _from_pretrained(loader, source: str, name: str, what: str, builtin: set[str]):
    try:
        return loader.from_pretrained(source)
    except Exception as exc:  # OSError, ValueError, HTTP errors: all mean "could not load this name"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QarmError(
            f"{what} {name!r} could not be loaded: looked for a built-in name ({', '.join(sorted(builtin))}), "
            f"a local folder ({Path(name).expanduser().resolve()}: absent) and the Hugging Face hub "
            f"({type(exc).__name__}: {first[:300]})") from None


def load_text_tower(name: str, max_length: int = 128) -> TextTower | None:
    """A text tower by built-in name, local HF folder, or HF hub name. ``""`` -> None."""
    if not name:
        return None
    from transformers import AutoModel, AutoTokenizer

    source, _ = _resolve_hf(name, "text model", BUILTIN_TEXT)
    hf = _from_pretrained(AutoModel, source, name, "text model", BUILTIN_TEXT)
    tok = _from_pretrained(AutoTokenizer, source, name, "text model tokenizer", BUILTIN_TEXT)
    if not hasattr(hf.config, "hidden_size"):
        raise QarmError(f"text model {name!r} ({type(hf).__name__}) has no hidden_size; expected a text encoder "
                        "(for CLIP-like models set align.joint_model instead)")
    return TextTower(hf, tok, max_length).eval().requires_grad_(False)


def load_joint_towers(name: str, max_length: int = 77) -> tuple[JointTextTower, JointImageTower, int]:
    """Text and image towers sharing one CLIP-like model. Returns (text, image, image size)."""
    from transformers import AutoModel, AutoTokenizer

    source, folder = _resolve_hf(name, "joint model", set())
    joint = _from_pretrained(AutoModel, source, name, "joint model", set())
    if not (hasattr(joint, "get_text_features") and hasattr(joint, "get_image_features")):
        raise QarmError(f"joint model {name!r} ({type(joint).__name__}) has no get_text_features/"
                        "get_image_features: expected a CLIP-like image-text model")
    tok = _from_pretrained(AutoTokenizer, source, name, "joint model tokenizer", set())
    mean, std = CLIP_MEAN, CLIP_STD
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    size = int(joint.config.vision_config.image_size)
    text_len = min(max_length, int(getattr(joint.config.text_config, "max_position_embeddings", max_length)))
    joint.requires_grad_(False)
    return JointTextTower(joint, tok, text_len).eval(), JointImageTower(joint, mean, std).eval(), size


def load_image_tower(name: str, weights: str = "", image_size: int = 224) -> ImageTower | None:
    """An image tower. ``efficientnet-lite0`` without weights uses the packaged ImageNet weights;
    other ``efficientnet-*``, ``timm:<arch>`` and ``torchvision:<arch>`` need ``weights`` (a state dict)."""
    if not name:
        return None
    if name in EFFNET_NAMES:
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(weights) if weights else (effnet_lite0_weights() if name == "efficientnet-lite0" else None)
        if path is None:
            raise QarmError(f"image model {name!r} has no built-in weights: set align.image_weights to a "
                            "state-dict file (only efficientnet-lite0 ships with qarm's dependencies)")
        net = EfficientNet.from_name(name, image_size=image_size)
        _load_weights(net, path, name, ignore=("_fc.",))
        lite = name.startswith("efficientnet-lite")
        mean, std = ((0.5,) * 3, (0.5,) * 3) if lite else (IMAGENET_MEAN, IMAGENET_STD)  # TF-lite: [-1, 1]
        return ImageTower(net, "efficientnet", mean, std, int(net._conv_head.out_channels)).eval().requires_grad_(False)
    lib, sep, arch = name.partition(":")
    if sep and lib in ("timm", "torchvision"):
        if not weights:
            raise QarmError(f"image model {name!r} needs align.image_weights (a state-dict file): qarm never "
                            "downloads image weights")
        try:
            mod = __import__(lib)
        except ImportError:
            raise QarmError(f"image model {name!r} needs the {lib} package (pip install {lib})") from None
        try:
            if lib == "timm":
                net = mod.create_model(arch, pretrained=False, num_classes=0)
            else:
                net = mod.models.get_model(arch, weights=None)
                _drop_classifier(net)
        except Exception as exc:  # unknown architecture names raise various errors per library
            raise QarmError(f"image model {name!r}: {lib} has no architecture {arch!r} ({exc})") from None
        _load_weights(net, Path(weights), name, ignore=("fc.", "classifier.", "head.", "heads."))
        with torch.no_grad():
            out_dim = int(net.eval()(torch.zeros(1, 3, image_size, image_size)).flatten(1).shape[1])
        return ImageTower(net, lib, IMAGENET_MEAN, IMAGENET_STD, out_dim).eval().requires_grad_(False)
    raise QarmError(f"unknown image model {name!r}: expected efficientnet-lite0 (built-in weights), one of "
                    f"{', '.join(EFFNET_NAMES)} with align.image_weights, timm:<arch> or torchvision:<arch>")


def _drop_classifier(net: nn.Module) -> None:
    """Replace the last Linear layer (the ImageNet classifier) with Identity: features come out."""
    last = None
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        return
    parent = net
    *path, leaf = last.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, nn.Identity())


def _load_weights(net: nn.Module, path: Path, name: str, ignore: tuple[str, ...]) -> None:
    """Load a state dict; classifier keys may be absent or extra, anything else must match."""
    if not path.is_file():
        raise QarmError(f"image weights for {name!r} not found: no file at {path.resolve()}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors: the file is not a torch state dict
        raise QarmError(f"{path}: not a readable torch state dict ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise QarmError(f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise QarmError(f"{path}: dimension mismatch for {name!r} parameter {k}: file has "
                            f"{tuple(v.shape)}, the architecture expects {tuple(own[k].shape)}")
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.startswith(ignore) and "num_batches_tracked" not in k]
    if missing:
        raise QarmError(f"{path}: {len(missing)} parameters of {name!r} are missing (first: {missing[0]}); "
                        "is this the weights file of that architecture?")
    net.load_state_dict(state, strict=False)


def image_to_array(path: str, size: int) -> np.ndarray:
    """Decode, resize the shorter side to ``size`` and centre-crop: uint8 [3, size, size]. Raises on bad files."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
