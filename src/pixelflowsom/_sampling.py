"""Which pixels ``fit`` trains on: a fixed-size random sample drawn without replacement, read chunk by chunk.

The sample is a function of the number of pixels, ``fraction`` and a seed only, never of how the data are chunked
or computed, so the same data give the same model whatever their dask layout or scheduler. :func:`sample_pixels`
draws the training sample of a list of images as :meth:`PixelFlowSOM.fit <pixelflowsom.PixelFlowSOM.fit>` does and
returns it as a :class:`PixelSample`, which ``fit`` also accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numba
import numpy as np
from sklearn.utils import check_random_state

from . import _images
from ._nearest import check_channel_positions


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
def _gather_2d(block, channels, ys, xs, out):
    """``out[k, i] = block[channels[k], ys[i], xs[i]]`` (``out`` float64). Assumes validated input."""
    for k in range(channels.shape[0]):
        for i in range(ys.shape[0]):
            out[k, i] = block[channels[k], ys[i], xs[i]]


@numba.njit(cache=True, nogil=True)
def _gather_3d(block, channels, zs, ys, xs, out):
    """``out[k, i] = block[channels[k], zs[i], ys[i], xs[i]]`` (``out`` float64). Assumes validated input."""
    for k in range(channels.shape[0]):
        for i in range(ys.shape[0]):
            out[k, i] = block[channels[k], zs[i], ys[i], xs[i]]


@numba.njit(cache=True, nogil=True)
def _scatter(values, rows, columns, block_values):
    """``values[rows[k], columns[i]] = block_values[k, i]``. Assumes validated input."""
    for k in range(rows.shape[0]):
        for i in range(columns.shape[0]):
            values[rows[k], columns[i]] = block_values[k, i]


def _take_block_pixels(block, local, channels):
    """Block task: float64 values ``(k, m)`` of the pixels at ``local`` in the ``k`` channels at ``channels``.

    ``local`` holds ``(ndim, m)`` positions inside the block; only the selected values are read.
    """
    block = np.asarray(block)
    out = np.empty((len(channels), len(local[0])), dtype=np.float64)
    if block.dtype.kind not in "iuf":  # not a numba-typed number: plain indexing
        out[:] = block[(slice(None), *local)][channels]
    elif len(local) == 2:
        _gather_2d(block, channels, *local, out)
    else:
        _gather_3d(block, channels, *local, out)
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
    return _sample_images([image], fraction, [seed], [None])[0]


#: Bytes of sampled values one dask computation of :func:`_sample_images` returns at most (beyond one block).
_BATCH_BYTES = 64 * 2**20


def _sample_images(images, fraction, seeds, channels):
    """:func:`sample_image` of every image, in its channels at positions ``channels``.

    ``channels`` holds one array of positions along ``c`` per image (``None``: all channels); only the selected
    channels of the sampled pixels are read.

    The chunk reads of all images run in a few dask computations, each returning at most about ``_BATCH_BYTES`` of
    sampled values, which are scattered into place before the next one starts: the results of all chunks are never
    held at once beside the sample (for a 1.34M x 40 sample, 430 MB).
    """
    import dask

    plans = [
        _plan(image, fraction, seed, positions) for image, seed, positions in zip(images, seeds, channels, strict=True)
    ]
    batches, batch, size = [], [], 0
    for values, _, groups in plans:
        for rows, tasks in groups:
            batch.append((values, rows, tasks))
            size += 8 * len(rows) * values.shape[0]
            if size >= _BATCH_BYTES:
                batches.append(batch)
                batch, size = [], 0
    batches.append(batch)
    for batch in batches:
        results = iter(dask.compute(*[task for _, _, tasks in batch for _, task in tasks]))
        for values, rows, tasks in batch:
            for out_rows, _ in tasks:
                _scatter(values, out_rows, rows, next(results))
    return [(values.T, coords) for values, coords, _ in plans]


def _plan(image, fraction, seed, channels):
    """Draw the pixels of one image; return ``(values, coords, groups)``.

    ``values`` is the ``(k, m)`` float64 output (the ``k`` channels at positions ``channels``, all for ``None``),
    filled already for a numpy-backed image; otherwise ``groups`` holds, for every spatial block with sampled pixels,
    the columns ``rows`` of its pixels and one task per chunk of the channel axis holding selected channels,
    ``(out_rows, task)``: the task (a ``Delayed``) reads that chunk as stored (the channel axis is not rechunked, so
    that a task holds one stored chunk) and returns the values of its selected channels at the pixels, the rows
    ``out_rows`` of ``values``.
    """
    import dask
    import dask.array as da

    data = getattr(image, "data", image)
    channels = check_channel_positions(channels, data.shape[0])  # the gather kernels read without bounds checks
    shape = data.shape[1:]
    flat = sample_indices(int(np.prod(shape)), fraction, seed)
    coords = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    if not isinstance(data, da.Array):
        return _take_block_pixels(data, tuple(np.ascontiguousarray(coords.T)), channels), coords, []

    values = np.empty((len(channels), len(flat)), dtype=np.float64)
    channel_bounds = np.cumsum((0, *data.chunks[0]))
    starts = [np.cumsum((0, *chunks)) for chunks in data.chunks[1:]]
    block_of = np.stack([np.searchsorted(s, coords[:, a], side="right") - 1 for a, s in enumerate(starts)], axis=1)
    block_id = np.ravel_multi_index(block_of.T, data.numblocks[1:])
    order = np.argsort(block_id, kind="stable")
    bounds = np.flatnonzero(np.diff(block_id[order])) + 1
    delayed_blocks = data.to_delayed()
    groups = []
    for rows in np.split(order, bounds):
        if len(rows) == 0:
            continue
        b = tuple(block_of[rows[0]])
        local = tuple(np.ascontiguousarray((coords[rows] - np.array([s[i] for s, i in zip(starts, b, strict=True)])).T))
        tasks = []
        for ci, (c0, c1) in enumerate(zip(channel_bounds[:-1], channel_bounds[1:], strict=True)):
            out_rows = np.flatnonzero((channels >= c0) & (channels < c1))
            if len(out_rows):
                task = dask.delayed(_take_block_pixels, pure=True)(
                    delayed_blocks[(ci, *b)], local, channels[out_rows] - c0
                )
                tasks.append((out_rows, task))
        groups.append((rows, tasks))
    return values, coords, groups


@dataclass(frozen=True, eq=False)
class PixelSample:
    """Sampled pixels of a list of images: what :meth:`PixelFlowSOM.fit <pixelflowsom.PixelFlowSOM.fit>` trains on.

    Made by :func:`sample_pixels`; ``PixelFlowSOM.fit`` accepts it in place of the images, which lets several
    models train on one sample (reading a large store once) and lets callers keep what the model does not: the
    values and coordinates of the training pixels.

    Parameters
    ----------
    values : ndarray of shape (n, p)
        The float64 values of the sampled pixels in the selected channels, finite (the transpose of a
        C-contiguous ``(p, n)`` array: channel-major, as the SOM kernels read it).
    coords : ndarray of shape (n, ndim)
        The int64 array indices ``([z,] y, x)`` of every pixel in its image.
    image_index : ndarray of shape (n,)
        The int64 position of every pixel's image in the list; the rows are ordered by image, then by position
        in the image (row-major).
    channels : list
        The ``p`` channel labels, as selected from the images' ``c`` coordinate.
    n_images : int
        Number of images sampled (some may contribute no pixel).
    """

    values: np.ndarray
    coords: np.ndarray
    image_index: np.ndarray
    channels: list
    n_images: int

    def __post_init__(self):
        n = self.values.shape[0]
        if self.values.ndim != 2 or self.values.shape[1] != len(self.channels):
            raise ValueError(
                f"values must be (n, {len(self.channels)}) for {len(self.channels)} channels, got {self.values.shape}."
            )
        if self.coords.ndim != 2 or self.coords.shape[0] != n or self.image_index.shape != (n,):
            raise ValueError(
                f"coords {self.coords.shape} and image_index {self.image_index.shape} must have one row per pixel "
                f"({n})."
            )

    @property
    def n_samples(self) -> int:
        """Number of sampled pixels."""
        return self.values.shape[0]

    def coords_by_image(self) -> list[np.ndarray]:
        """Split :attr:`coords` by image.

        Returns
        -------
        list of ndarray
            One ``(m_i, ndim)`` int64 array per image, in the order of the images (empty for an image that
            contributes no pixel).
        """
        bounds = np.searchsorted(self.image_index, np.arange(1, self.n_images))
        return np.split(np.asarray(self.coords), bounds)


def sample_pixels(images, fraction: float, *, channels=None, random_state=None) -> PixelSample:
    """Sample ``int(fraction * n_pixels)`` pixels of every image, as :class:`~pixelflowsom.PixelFlowSOM` does.

    Every image, in the order given, gets its own seed, derived from ``random_state`` and its position, and its
    draw does not depend on how it is chunked; sampled pixels with a NaN (or infinite) value in a selected channel
    are then dropped. Only the chunks holding sampled pixels are read, each once, in a few dask computations over
    all images (each returning at most about 64 MB of values, so that memory stays the sample's plus a few chunks).

    Parameters
    ----------
    images : xarray.DataArray, DataTree or list of them
        Images with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")`` (see :class:`~pixelflowsom.PixelFlowSOM`).
    fraction : float
        In (0, 1].
    channels : str, int, list or None, default=None
        Channels to sample, by the labels of the images' ``c`` coordinate; ``None``: all channels of the first
        image.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw: one integer is drawn from it. ``PixelFlowSOM(random_state=s).fit(images)`` draws exactly
        ``sample_pixels(images, fraction, channels=channels, random_state=s)`` and trains as
        ``PixelFlowSOM(random_state=s).fit(sample)`` does.

    Returns
    -------
    PixelSample
        The sampled pixels, their coordinates and images.

    Raises
    ------
    KeyError
        If an image lacks a channel (naming it and listing the image's channels).
    ValueError, TypeError
        Bad images or parameters (checked before any pixel is read), a fraction that samples no pixel, or an image
        whose sampled pixels all have a NaN channel.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1].")
    checked, _ = _images.check_images(images)
    labels = _images.resolve_channels(channels, checked[0])
    # Positions, not a selection (image.isel(c=...)): the sampled pixels' selected channels are read where they are,
    # without a copy of every chunk's selected channels first.
    positions = [_images.channel_positions(image, labels, i) for i, image in enumerate(checked)]
    n_pixels = [int(np.prod(image.shape[1:])) for image in checked]
    if sum(sample_size(n, fraction) for n in n_pixels) < 1:
        raise ValueError(
            f"fraction={fraction} of the {sum(n_pixels)} pixels samples no pixel; raise fraction to at least "
            f"{1 / max(n_pixels):.3g}."
        )
    base_seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    seeds = [np.random.SeedSequence([base_seed, i]) for i in range(len(checked))]
    values, coords = [], []
    for i, (v, c) in enumerate(_sample_images(checked, fraction, seeds, positions)):
        image = checked[i]
        finite = np.isfinite(v).all(axis=1)
        if len(v) and not finite.any():
            raise ValueError(
                f"All {len(v)} sampled pixels of image {_images.image_name(image, i)} have a NaN (or infinite) value "
                f"in the selected channels {labels}; select other channels, fix the image or leave it out."
            )
        if not finite.all():
            v, c = v.T[:, finite].T, c[finite]
        values.append(v)
        coords.append(c)
    # Keep the channel-major layout ((n, p) views of (p, n) arrays), which the SOM kernels read without a copy.
    pooled = values[0] if len(values) == 1 else np.concatenate([v.T for v in values], axis=1).T
    image_index = np.repeat(np.arange(len(checked), dtype=np.int64), [len(c) for c in coords])
    return PixelSample(pooled, np.concatenate(coords), image_index, labels, len(checked))
