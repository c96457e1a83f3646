"""Which pixels ``fit`` trains on: a fixed-size random sample drawn without replacement.

The sample is a function of the number of pixels, ``fraction`` and a seed only, never of how the data are chunked
or computed, so the same data give the same model whatever their dask layout or scheduler.
"""

from __future__ import annotations

import numpy as np


def sample_size(n: int, fraction: float) -> int:
    """Return the number of pixels sampled from ``n``: ``int(fraction * n)``, as FlowSOM and harpy count it."""
    return int(fraction * n)


def sample_indices(n: int, fraction: float, seed) -> np.ndarray:
    """Sorted indices of ``int(fraction * n)`` of ``range(n)``, drawn without replacement.

    Parameters
    ----------
    n
        Number of items to sample from.
    fraction
        Fraction in (0, 1].
    seed
        Anything :func:`numpy.random.default_rng` accepts (an int, a :class:`numpy.random.SeedSequence`).

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices (sorted, so that reading them walks the data once, chunk after chunk).
    """
    size = sample_size(n, fraction)
    if size == n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False, shuffle=False)).astype(np.int64)


def take_rows(X, rows: np.ndarray) -> np.ndarray:
    """Read the rows ``rows`` (sorted) of a 2D numpy or dask array into an in-memory float64 array.

    For a dask array only the chunks holding sampled rows are read.
    """
    import dask.array as da

    if isinstance(X, da.Array):
        return np.asarray(X[rows].compute(), dtype=np.float64)
    return np.asarray(X[rows], dtype=np.float64)
