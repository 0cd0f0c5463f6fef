"""Config of the ``report`` stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportConfig:
    title: str = "qarm run report"
    projection_max_items: int = 3000
