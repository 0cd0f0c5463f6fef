"""Matplotlib figures rendered to inline PNG ``<img>`` tags.

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot), so no
global state, no display and no backend switch is involved.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from qarm.report.html import esc

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd"]


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 7.0, height: float = 3.4):
    """A figure and its axes (a flat array when more than one)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    return fig, axes


def figure_html(fig: Figure, alt: str, caption: str = "", dpi: int = 100) -> str:
    """``<figure>`` with the plot as a base64 PNG (no timestamp metadata, so same run, same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def bars(ax, labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None = None,
         color: str | Sequence[str] = PALETTE[0], annotate: bool = True, fmt: str = "{:.3g}") -> None:
    """One bar per label, optional error bars, values written above the bars."""
    x = np.arange(len(labels))
    ax.bar(x, values, yerr=errors, color=color, capsize=4 if errors is not None else 0, width=0.65)
    ax.set_xticks(x, [str(v) for v in labels])
    if annotate:
        for xi, v, e in zip(x, values, errors if errors is not None else [0] * len(values)):
            if np.isfinite(v):
                ax.annotate(fmt.format(v), (xi, v + (e or 0)), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 2), textcoords="offset points")


def grouped_bars(ax, groups: Sequence[str], series: dict[str, tuple[Sequence[float], Sequence[float] | None]],
                 annotate: bool = False, legend: bool = True) -> None:
    """Bars grouped by ``groups`` (x ticks), one colour per series name; (means, stds or None) per series.

    ``legend=False`` leaves the legend to :func:`shared_legend` (panels that share their series)."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for s, (name, (means, stds)) in enumerate(series.items()):
        pos = x - 0.4 + width * (s + 0.5)
        means = np.asarray(means, dtype=float)
        errs = None if stds is None else np.nan_to_num(np.asarray(stds, dtype=float))
        ax.bar(pos, means, width=width * 0.95, yerr=errs, capsize=3 if errs is not None else 0,
               color=PALETTE[s % len(PALETTE)], label=str(name))
        if annotate:  # value above the error bar; vertical when many thin bars share a group
            for p, m, e in zip(pos, means, errs if errs is not None else np.zeros_like(means)):
                if np.isfinite(m):
                    ax.annotate(f"{m:.3f}", (p, m + e), ha="center", va="bottom", fontsize=7,
                                rotation=90 if n > 2 else 0, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [str(g) for g in groups])
    if legend and len(series) > 1:
        ax.legend(fontsize=8, frameon=False, loc="upper left", ncols=min(len(series), 3))


def shared_legend(fig: Figure, ax) -> None:
    """One legend above all panels (constrained layout makes room), so it never covers a bar."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > 1:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6), fontsize=8, frameon=False)


def zoom_ylim(ax, values: Sequence[float], errors: Sequence[float] | None = None, floor: float | None = None,
              headroom: float = 0.25) -> None:
    """Start the y axis near the data (e.g. AUC at 0.5) so small but real differences are visible."""
    values = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    e = np.zeros_like(values) if errors is None else np.nan_to_num(np.asarray(errors, dtype=float))
    ok = np.isfinite(values)
    if not ok.any():
        return
    v, e = values[ok], e[ok]
    lo, hi = float((v - e).min()), float((v + e).max())
    span = max(hi - lo, 1e-3)
    bottom = lo - 0.5 * span
    if floor is not None:
        bottom = max(floor, bottom)
    ax.set_ylim(bottom, hi + headroom * span + 0.01)
