"""What every report section reads: the config, the run directory, its metrics and manifest.

Stages name nested figures with dots (``raw.recall@10``, ``variants.qarm.click.auc``); whether a
stage stores them flat (``{"raw.recall@10": …}``) or nested (``{"raw": {"recall@10": …}}``),
:func:`lookup` finds them, so the report reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qarm.config import Config
from qarm.report.plots import figure_html
from qarm.runner import STAGE_BY_NAME, RunDir


def lookup(tree: Any, dotted: str) -> Any:
    """Value at ``dotted`` in nested dicts, whichever dots are real keys and which are nesting; None if absent."""
    if not isinstance(tree, dict):
        return None
    if dotted in tree:
        return tree[dotted]
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in tree:
            found = lookup(tree[head], ".".join(parts[i:]))
            if found is not None:
                return found
    return None


def flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of nested dicts, in insertion order; lists stay leaves."""
    if not isinstance(tree, dict):
        return [(prefix, tree)]
    out: list[tuple[str, Any]] = []
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.extend(flatten(v, key) if isinstance(v, dict) and v else [(key, v)])
    return out


def mean_std(value: Any) -> tuple[float | None, float | None]:
    """(mean, std) of a figure stored as a number or as ``{mean, std}``; (None, None) otherwise."""
    if isinstance(value, bool):
        return None, None
    if isinstance(value, (int, float)):
        return float(value), None
    if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
        std = value.get("std")
        return float(value["mean"]), float(std) if isinstance(std, (int, float)) else None
    return None, None


def number(value: Any) -> float | None:
    m, _ = mean_std(value)
    return m


@dataclass
class ReportContext:
    cfg: Config
    run: RunDir
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, cfg: Config, run: RunDir) -> "ReportContext":
        return cls(cfg, run, run.metrics(), run.manifest())

    def stage_metrics(self, stage: str) -> dict[str, Any]:
        value = self.metrics.get(STAGE_BY_NAME[stage].metrics_key)
        return value if isinstance(value, dict) else {}

    def has_run(self, stage: str) -> bool:
        """The stage left a manifest entry or figures in metrics.json."""
        return stage in self.manifest.get("stages", {}) or bool(self.stage_metrics(stage))

    def artifact(self, name: str) -> Path | None:
        p = self.run / name
        return p if p.exists() else None

    def plot(self, fig, alt: str, caption: str = "") -> str:
        return figure_html(fig, alt, caption, dpi=self.cfg.report.dpi)
