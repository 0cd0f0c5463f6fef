"""2-D projections of item embeddings for the before/after alignment plot."""

from __future__ import annotations

import numpy as np

from qarm.errors import QarmError
from qarm.sample import sample_rows


def subsample(n: int, max_items: int, seed: int) -> np.ndarray:
    """Sorted row indices int64 [min(n, max_items)], drawn without replacement with ``seed``."""
    return sample_rows(n, max_items, [seed, 0x2D])


def pca_2d(emb: np.ndarray) -> np.ndarray:
    """float32 [n, d] -> float32 [n, 2]: the top two principal components (exact SVD; numpy only,
    sklearn's import alone costs seconds). Signs fixed so the largest loading is positive: same
    input, same picture."""
    x = emb.astype(np.float64) - emb.mean(axis=0, dtype=np.float64)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    comps *= np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])[:, None]
    out = x @ comps.T
    if out.shape[1] < 2:  # d == 1
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out.astype(np.float32)


def project_2d(emb: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project float32 [n, d] embeddings to float32 [n, 2] with PCA or t-SNE (PCA-initialised).

    PCA shows the global geometry in seconds; t-SNE shows local clusters but costs minutes on
    thousands of items on a CPU.
    """
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise QarmError(f"project_2d: expected a 2-D embedding matrix, got shape {emb.shape}")
    n = emb.shape[0]
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    if method == "pca":
        return pca_2d(emb)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (n - 1) / 3.0))
        return TSNE(n_components=2, init="pca", perplexity=perplexity,
                    random_state=seed).fit_transform(emb).astype(np.float32)
    raise QarmError(f"report.projection: unknown method {method!r}; expected 'pca' or 'tsne'")


def colour_labels(labels: np.ndarray, max_classes: int = 12) -> tuple[np.ndarray, list[str]]:
    """int64 class index per item for the ``max_classes - 1`` most frequent labels, the rest in 'other'.

    Returns (index [n], class names); 'other' (if used) is last.
    """
    labels = np.asarray(labels).astype(str)
    names, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((names, -counts))  # most frequent first, ties by name: deterministic
    if len(names) <= max_classes:
        keep = list(names[order])
    else:
        keep = list(names[order[: max_classes - 1]])
    lut = {name: i for i, name in enumerate(keep)}
    other = len(keep)
    index = np.array([lut.get(v, other) for v in labels], dtype=np.int64)
    if (index == other).any():
        keep.append("other")
    return index, keep
