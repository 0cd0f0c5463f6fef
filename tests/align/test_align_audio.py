"""Audio: WAV reading and resampling, the mel filterbank, log-mel of known tones, the CNN, bad files."""

from __future__ import annotations

import wave

import numpy as np
import torch

from qarm.align.audio import AudioCNN, LogMel, mel_filterbank, read_wav
from qarm.align.inputs import decode_audio


def write_tone(path, freq: float, sr: int = 8000, seconds: float = 0.5, channels: int = 1) -> None:
    t = np.arange(int(sr * seconds)) / sr
    x = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(np.repeat(x, channels).tobytes())


def test_read_wav_resamples_crops_and_pads(tmp_path):
    write_tone(tmp_path / "a.wav", 440.0, sr=8000, seconds=0.5, channels=2)
    x = read_wav(str(tmp_path / "a.wav"), 16000, 1.0)
    assert x.shape == (16000,) and x.dtype == np.float32
    assert np.abs(x[:7900]).max() > 0.4 and np.abs(x[8100:]).max() == 0.0   # 0.5 s of tone, then padding
    spectrum = np.abs(np.fft.rfft(x[:8000]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440.0) < 3.0           # pitch survives resampling


def test_mel_filterbank_shape_and_order():
    fb = mel_filterbank(512, 40, 16000).numpy()
    assert fb.shape == (40, 257) and (fb >= 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > peaks[0]          # bands rise in frequency
    widths = (fb > 0).sum(axis=1)
    assert widths[-1] > widths[0]                                         # mel bands widen with frequency


def test_log_mel_puts_a_tone_in_the_right_band(tmp_path):
    sr, fb_mels = 16000, 64
    lm = LogMel(sr, fb_mels)
    t = torch.arange(sr) / sr
    low, high = torch.sin(2 * np.pi * 300 * t), torch.sin(2 * np.pi * 3000 * t)
    out = lm(torch.stack([low, high]))
    assert out.shape == (2, 64, 1 + sr // lm.hop)
    band_low, band_high = out[0].mean(1).argmax().item(), out[1].mean(1).argmax().item()
    assert band_high > band_low + 10


def test_audio_cnn_and_corrupt_files(tmp_path):
    write_tone(tmp_path / "ok.wav", 440.0)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    mel, ok = decode_audio([str(tmp_path / "ok.wav"), str(tmp_path / "bad.wav"), None], 8000, 0.5, 32, progress=False)
    assert ok.tolist() == [True, False, False] and mel.dtype == np.float16 and mel.shape[:2] == (3, 32)
    cnn = AudioCNN(32, out_dim=16)
    out = cnn(torch.from_numpy(mel))
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert cnn.convs[0].weight.grad is not None
