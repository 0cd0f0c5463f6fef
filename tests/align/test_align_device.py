"""align.device (issue 14 item 4): validation, resolution through qarm.distributed, the process-group
backend the launcher picks (gloo on CPU, NCCL on CUDA), and training on the resolved device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_helpers import TEST_CONFIGS

import qarm.align.__main__ as align_main
import qarm.distributed as qdist
from qarm.align.config import AlignConfig
from qarm.align.inputs import ItemStore, raw_embedding
from qarm.align.model import AlignModel
from qarm.align.stage import check_config, run_align
from qarm.align.train import AlignTrainer, embed_rows
from qarm.config import load_config
from qarm.errors import ConfigError
from qarm.runner import RunDir


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:1"])
def test_valid_device_specs_pass_the_config_check(spec):
    check_config(AlignConfig(device=spec))


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CPU", ""])
def test_bad_device_spec_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="align.device"):
        check_config(AlignConfig(device=spec))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour; a GPU machine runs on cuda")
def test_cuda_on_a_cpu_machine_fails_before_any_work(demo_copy):
    with pytest.raises(ConfigError, match="align.device: 'cuda' asked for, but torch sees no CUDA device"):
        run_align(load_config(TEST_CONFIGS / "demo-fast.yaml", ["align.device=cuda"]), RunDir(demo_copy))


class _Joined(Exception):
    pass


def _launch(monkeypatch, device: str, cuda: bool) -> str:
    """Run ``python -m qarm.align`` as rank 0 of 2 up to the process-group join; returns the backend."""
    seen = {}

    def fake_init(backend, **kw):
        seen["backend"] = backend
        raise _Joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(qdist.dist, "init_process_group", fake_init)
    monkeypatch.setattr(qdist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("gpu", str(d)))
    with pytest.raises(_Joined):
        align_main.main([str(TEST_CONFIGS / "demo-fast.yaml"), "--out", "/nonexistent", "--set",
                         f"align.device={device}"])
    return seen["backend"], seen.get("gpu")


def test_launcher_backend_follows_the_device(monkeypatch):
    assert _launch(monkeypatch, "auto", cuda=False) == ("gloo", None)
    assert _launch(monkeypatch, "cpu", cuda=True) == ("gloo", None)   # CUDA present, CPU asked: no NCCL
    assert _launch(monkeypatch, "auto", cuda=True) == ("nccl", "cuda:0")
    assert _launch(monkeypatch, "cuda:1", cuda=True) == ("nccl", "cuda:1")


def test_trainer_and_encoder_run_on_the_resolved_device():
    device = qdist.resolve_device("auto")
    rng = np.random.default_rng(0)
    store = ItemStore(["text"], np.ones((64, 1), bool), feats={"text": rng.normal(size=(64, 8)).astype(np.float32)})
    store.raw = raw_embedding(store)
    torch.manual_seed(0)
    model = AlignModel({"text": 8}, {}, hidden=16, dim=8).to(device)
    pairs = rng.integers(0, 64, size=(128, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    t = AlignTrainer(epochs=1, batch_size=32, seed=0, progress=False, device=device, content_weight=0.5)
    t.fit(model, store, pairs[:, 0], pairs[:, 1], np.ones(len(pairs), np.float32), np.arange(64))
    assert np.isfinite(t.loss_history_).all()
    assert all(p.device.type == device.type for p in model.parameters())
    emb = embed_rows(model, store)  # device inferred from the model; numpy out
    assert emb.shape == (64, 8) and emb.dtype == np.float32
