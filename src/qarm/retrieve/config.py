"""Config of the ``retrieve`` stage: generative retrieval over codes and its baselines."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RetrieveConfig:
    """Generative retrieval (decoder-only transformer over code tokens) against SASRec and popularity.

    Every method sees the same leave-one-out split, the same history length and, for the two
    learned sequence models, the same width, depth, epochs and early-stopping rule.
    """

    enabled: bool = False           # off by default: the stage then writes only {"enabled": false}
    methods: list[str] = field(default_factory=lambda: ["aligned_codes", "raw_codes", "sasrec", "popularity"])
    seeds: list[int] = field(default_factory=lambda: [0])
    label: str = ""                 # event label column that makes an interaction; "" = every event
    max_len: int = 50               # history items the models read (the last ones)
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    epochs: int = 30
    patience: int = 5               # epochs without a better valid Recall@10 before stopping
    batch_size: int = 128           # training windows per step
    windows_per_user: int = 0       # training windows of max_len + 1 items per user, latest first; 0 = all
                                    # (every transition once), 1 = SASRec's recipe (most recent items only)
    lr: float = 0.001
    weight_decay: float = 0.0
    beam_size: int = 20             # generative decoding beam; also the longest list scored
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])  # cut-offs of the recall curve
    exclude_history: bool = True    # never recommend an item the user already has (every method)
    valid_users: int = 0            # users sampled (by seed) for the per-epoch valid score; 0 = all
    eval_batch_users: int = 128     # users decoded at once
    device: str = "auto"
    threads: int = 2                # torch intra-op threads

    def __post_init__(self) -> None:
        from qarm.errors import ConfigError

        # ``device`` is checked by the stage (qarm.distributed.check_device): that module loads torch
        known = {"aligned_codes", "raw_codes", "sasrec", "popularity"}
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ConfigError(f"retrieve.methods: {bad[0]!r} is not one of {', '.join(sorted(known))}")
        if not self.seeds:
            raise ConfigError("retrieve.seeds: give at least one seed")
        for name in ("max_len", "dim", "layers", "heads", "epochs", "batch_size", "beam_size", "eval_batch_users"):
            if getattr(self, name) < 1:
                raise ConfigError(f"retrieve.{name}: must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ConfigError(f"retrieve.dim ({self.dim}) must be a multiple of retrieve.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"retrieve.dropout: must lie in [0, 1), got {self.dropout}")
        ks = sorted(set(self.ks) | {5, 10})
        if ks[0] < 1 or ks[-1] > self.beam_size:
            raise ConfigError(f"retrieve.ks: cut-offs must lie in [1, beam_size={self.beam_size}] "
                              f"(5 and 10 are always scored), got {self.ks}")
