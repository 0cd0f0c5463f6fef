"""Audio: WAV reading, a log-mel spectrogram built on ``torch.stft``, and a small CNN trained from scratch.

No pretrained audio weights exist here, so the audio tower learns during alignment (in every mode).
Its frozen "raw" stand-in is the per-band mean and standard deviation of the log-mel spectrogram:
a fixed, content-only descriptor (timbre and loudness profile) with no learned weights.
"""

from __future__ import annotations

import math
import wave
from math import gcd

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_wav(path: str, sample_rate: int, seconds: float) -> np.ndarray:
    """Mono float32 [sample_rate * seconds] in [-1, 1], resampled, cropped or zero-padded. Raises on bad files."""
    with wave.open(path, "rb") as w:
        n, channels, width, rate = w.getnframes(), w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(n)
    if n == 0 or not raw:
        raise ValueError("no audio frames")
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        x = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32) / float(2 ** (8 * width - 1))
    else:
        raise ValueError(f"unsupported sample width {width} bytes")
    x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = gcd(rate, sample_rate)
        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
    length = int(round(sample_rate * seconds))
    out = np.zeros(length, dtype=np.float32)
    out[: min(length, len(x))] = x[:length]
    return out


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, float32 [n_mels, n_fft // 2 + 1], each normalised to unit area (Slaney)."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (np.asarray(m) / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lower) / np.maximum(centre - lower, 1e-9)
    down = (upper - freqs[None]) / np.maximum(upper - centre, 1e-9)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb *= (2.0 / np.maximum(upper - lower, 1e-9))  # equal area per filter: broad high bands not louder
    return torch.tensor(fb, dtype=torch.float32)


class LogMel(nn.Module):
    """waveform float [b, n] -> log-mel float [b, n_mels, frames]; 25 ms windows, 10 ms hop."""

    def __init__(self, sample_rate: int, n_mels: int) -> None:
        super().__init__()
        self.win = int(round(0.025 * sample_rate))
        self.hop = int(round(0.010 * sample_rate))
        self.n_fft = 2 ** math.ceil(math.log2(self.win))
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.register_buffer("fb", mel_filterbank(self.n_fft, n_mels, sample_rate), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav, self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2                    # [b, n_fft/2+1, frames]
        return torch.log(self.fb @ power + 1e-6)


def logmel_stats(logmel: np.ndarray) -> np.ndarray:
    """logmel float [n, n_mels, frames] -> float32 [n, 2 * n_mels]: per-band mean and std over time."""
    x = logmel.astype(np.float32)
    return np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)


class AudioCNN(nn.Module):
    """Log-mel [b, n_mels, frames] -> [b, out_dim]: three strided 1-D convolutions over time (mel bands
    as channels, as in TC-ResNet keyword spotting: cheap on CPU), global average pool, linear.

    GroupNorm, not BatchNorm: an item's output never depends on the rest of its batch.
    """

    def __init__(self, n_mels: int = 64, out_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        chans = [n_mels, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 5, stride=2, padding=2) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(nn.GroupNorm(8, c) for c in chans[1:])
        self.proj = nn.Linear(chans[-1], out_dim)
        self.out_dim = out_dim

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool1d(logmel.float(), 2, ceil_mode=True)  # 20 ms frames: plenty for timbre and rhythm
        x = (x - x.mean(dim=(1, 2), keepdim=True)) / (x.std(dim=(1, 2), keepdim=True) + 1e-5)  # gain invariance
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return self.proj(x.mean(dim=2))
