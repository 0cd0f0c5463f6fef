"""Row blocks and query budgets for [queries, catalogue] score matrices, so that evaluation memory
and time do not grow with the catalogue beyond a set budget.

Evaluation scores a block of queries against every item at once. A fixed block of rows is
O(block x items) memory: 2,048 rows over 1M items is 8 GiB of float32 before any comparison.
``block_rows`` bounds the block's cells instead, so memory stays ``cells`` floats whatever the
catalogue, and the answers are the same (blocking never changes a row's scores).
"""

from __future__ import annotations

SCORE_BLOCK_CELLS = 1 << 25   # 32M float32 = 128 MiB per score block
EVAL_MAX_SCORES = 5_000_000_000   # default budget of one evaluation: queries x catalogue scores


def block_rows(n_cols: int, max_rows: int, cells: int = SCORE_BLOCK_CELLS) -> int:
    """Rows per block (1 <= rows <= max_rows) so that rows x n_cols <= cells where it can be."""
    return max(1, min(int(max_rows), int(cells) // max(int(n_cols), 1)))


def query_cap(max_queries: int, n_cols: int, max_scores: int = EVAL_MAX_SCORES) -> int:
    """How many queries an evaluation scores against ``n_cols`` items (0 = all): at most
    ``max_queries`` (0 = no cap) and at most ``max_scores // n_cols`` (``max_scores`` 0 = no budget),
    at least 1. With both caps an evaluation costs O(max_scores), not O(queries x catalogue): at the
    default 5e9, 50,000 queries up to 100k items (the figures of every real data set unchanged),
    5,000 over 1M items."""
    if max_scores <= 0 or n_cols <= 0:
        return int(max_queries)
    by_budget = max(1, int(max_scores) // int(n_cols))
    return by_budget if max_queries <= 0 else min(int(max_queries), by_budget)
