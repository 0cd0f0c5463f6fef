"""Row blocks for [queries, catalogue] score matrices whose memory must not grow with the catalogue.

Evaluation scores a block of queries against every item at once. A fixed block of rows is
O(block x items) memory: 2,048 rows over 1M items is 8 GiB of float32 before any comparison.
``block_rows`` bounds the block's cells instead, so memory stays ``cells`` floats whatever the
catalogue, and the answers are the same (blocking never changes a row's scores).
"""

from __future__ import annotations

SCORE_BLOCK_CELLS = 1 << 25   # 32M float32 = 128 MiB per score block


def block_rows(n_cols: int, max_rows: int, cells: int = SCORE_BLOCK_CELLS) -> int:
    """Rows per block (1 <= rows <= max_rows) so that rows x n_cols <= cells where it can be."""
    return max(1, min(int(max_rows), int(cells) // max(int(n_cols), 1)))
