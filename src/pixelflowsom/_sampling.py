"""Which pixels ``fit`` trains on: a fixed-size random sample drawn without replacement.

The sample is a function of the number of pixels, ``fraction`` and a seed only, never of how the data are chunked
or computed, so the same data give the same model whatever their dask layout or scheduler.
"""

from __future__ import annotations

import numba
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


@numba.njit(cache=True, nogil=True)
def _gather_2d(block, ys, xs, out):
    """``out[c, i] = block[c, ys[i], xs[i]]`` (``out`` float64). Assumes validated input."""
    for c in range(block.shape[0]):
        for i in range(ys.shape[0]):
            out[c, i] = block[c, ys[i], xs[i]]


@numba.njit(cache=True, nogil=True)
def _gather_3d(block, zs, ys, xs, out):
    """``out[c, i] = block[c, zs[i], ys[i], xs[i]]`` (``out`` float64). Assumes validated input."""
    for c in range(block.shape[0]):
        for i in range(ys.shape[0]):
            out[c, i] = block[c, zs[i], ys[i], xs[i]]


@numba.njit(cache=True, nogil=True)
def _scatter_columns(values, columns, block_values):
    """``values[:, columns] = block_values``. Assumes validated input."""
    for c in range(values.shape[0]):
        for i in range(columns.shape[0]):
            values[c, columns[i]] = block_values[c, i]


def _take_block_pixels(block, local):
    """Block task: float64 values ``(c, m)`` of the pixels at ``local`` (``(ndim, m)`` positions inside the block)."""
    block = np.asarray(block)
    out = np.empty((block.shape[0], len(local[0])), dtype=np.float64)
    if block.dtype.kind not in "iuf":  # not a numba-typed number: plain indexing
        out[:] = block[(slice(None), *local)]
    elif len(local) == 2:
        _gather_2d(block, *local, out)
    else:
        _gather_3d(block, *local, out)
    return out


def sample_image(image, fraction: float, seed):
    """Sample ``int(fraction * n_pixels)`` pixels of one image, reading it chunk by chunk.

    Parameters
    ----------
    image
        ``(c, [z,] y, x)`` numpy- or dask-backed :class:`xarray.DataArray` (or plain array), channels selected.
    fraction
        Fraction in (0, 1].
    seed
        Seed of the draw (see :func:`sample_indices`).

    Returns
    -------
    values : numpy.ndarray
        ``(m, c)`` float64 values of the sampled pixels, in the row-major order of their positions (whatever the
        chunking): the transpose of a C-contiguous ``(c, m)`` array.
    coords : numpy.ndarray
        ``(m, ndim)`` int64 array indices ``([z,] y, x)`` of the sampled pixels.

    Notes
    -----
    No flattened copy or coordinate grid of the image is made. For a dask array, one task per chunk holding
    sampled pixels reads that chunk and returns just those pixels; the tasks run on the current dask scheduler.
    """
    import dask
    import dask.array as da

    data = getattr(image, "data", image)
    shape = data.shape[1:]
    flat = sample_indices(int(np.prod(shape)), fraction, seed)
    coords = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    if not isinstance(data, da.Array):
        return _take_block_pixels(data, tuple(np.ascontiguousarray(coords.T))).T, coords

    values = np.empty((data.shape[0], len(flat)), dtype=np.float64)
    data = data.rechunk({0: -1})
    starts = [np.cumsum((0, *chunks)) for chunks in data.chunks[1:]]
    block_of = np.stack([np.searchsorted(s, coords[:, a], side="right") - 1 for a, s in enumerate(starts)], axis=1)
    block_id = np.ravel_multi_index(block_of.T, data.numblocks[1:])
    order = np.argsort(block_id, kind="stable")
    bounds = np.flatnonzero(np.diff(block_id[order])) + 1
    delayed_blocks = data.to_delayed()
    tasks, positions = [], []
    for rows in np.split(order, bounds):
        if len(rows) == 0:
            continue
        b = tuple(block_of[rows[0]])
        local = np.ascontiguousarray((coords[rows] - np.array([s[i] for s, i in zip(starts, b, strict=True)])).T)
        tasks.append(dask.delayed(_take_block_pixels, pure=True)(delayed_blocks[(0, *b)], tuple(local)))
        positions.append(rows)
    for rows, block_values in zip(positions, dask.compute(*tasks), strict=True):
        _scatter_columns(values, rows, block_values)
    return values.T, coords
