"""Which pixels ``fit`` trains on: a fixed-size random sample drawn without replacement, read chunk by chunk.

The sample is a function of the number of pixels, its size (``fraction`` of every image, or ``n_samples`` in all)
and a seed only, never of how the data are chunked or computed, so the same data give the same model whatever their
dask layout or scheduler. :func:`sample_pixels`
draws the training sample of a list of images as :meth:`PixelFlowSOM.fit <pixelflowsom.PixelFlowSOM.fit>` does and
returns it as a :class:`PixelSample`, which ``fit`` also accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numba
import numpy as np
from sklearn.utils import check_random_state

from . import _images
from ._nearest import check_channel_positions
from ._schedulers import THREADS, active_scheduler, distributed_client, in_process


def sample_size(n: int, fraction: float) -> int:
    """Return the number of pixels sampled from ``n``: ``int(fraction * n)``, as FlowSOM and harpy count it."""
    return int(fraction * n)


def apportion(n_samples: int, sizes) -> np.ndarray:
    """Split ``n_samples`` draws over groups of ``sizes`` items in proportion to their sizes (largest remainders).

    Parameters
    ----------
    n_samples
        Total number of draws; capped at ``sum(sizes)``.
    sizes
        Number of items of every group.

    Returns
    -------
    numpy.ndarray
        int64 draws per group, each at most its size, summing to ``min(n_samples, sum(sizes))``: the integer parts of
        the exact shares, then one more for the groups with the largest fractional parts (the first on ties).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    n_samples = min(int(n_samples), total)
    if total == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    exact = sizes * n_samples  # Python ints would not overflow; int64 holds 2**63 > any pixels * samples here
    counts = exact // total
    remainders = exact - counts * total
    extra = n_samples - int(counts.sum())
    counts[np.argsort(-remainders, kind="stable")[:extra]] += 1
    return counts


#: Uniform variates drawn at a time by :func:`sample_indices` (8 MB).
_TILE = 1 << 20
#: :func:`sample_indices` draws with numpy's ``choice`` up to this many items, or when the sample is at most a
#: twentieth of them (then numpy's ``choice`` runs Floyd's algorithm, in memory proportional to the sample); beyond,
#: numpy would permute an index of all items (``8 * n`` bytes: 800 MB for a 10,000 x 10,000 image).
_PERMUTE_LIMIT = 1 << 22


@numba.njit(cache=True, nogil=True)
def _select(uniforms, start, n, k, taken, out):
    """Knuth's selection sampling (Algorithm S) of items ``start, start + 1, ...`` with the variates ``uniforms``.

    Item ``t`` is taken with probability ``(k - taken) / (n - t)``, which draws ``k`` of ``n`` items uniformly without
    replacement, in increasing order. Writes to ``out[taken:]``; returns the new ``taken``. Assumes validated input.
    """
    for i in range(uniforms.shape[0]):
        if taken == k:
            break
        t = start + i
        if (n - t) * uniforms[i] < k - taken:
            out[taken] = t
            taken += 1
    return taken


def sample_indices(n: int, size: int, seed) -> np.ndarray:
    """Sorted indices of ``size`` of ``range(n)``, drawn uniformly without replacement.

    Parameters
    ----------
    n
        Number of items to sample from.
    size
        Number of items to draw, ``0 <= size <= n``.
    seed
        Anything :func:`numpy.random.default_rng` accepts (an int, a :class:`numpy.random.SeedSequence`).

    Returns
    -------
    numpy.ndarray
        Sorted int64 indices (sorted, so that reading them walks the data once, chunk after chunk).

    Notes
    -----
    Memory is the output's (``8 * size`` bytes) plus at most 32 MB: numpy's ``choice`` draws the sample of up to
    ``_PERMUTE_LIMIT`` items, or of at most a twentieth of them (Floyd's algorithm); a larger share of more items is
    drawn by selection sampling over ``n`` uniform variates drawn ``_TILE`` at a time (numpy's ``choice`` would permute
    an index of all ``n`` items, ``8 * n`` bytes: 800 MB for a 10,000 x 10,000 image).
    """
    n, size = int(n), int(size)
    if size == n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if n <= _PERMUTE_LIMIT or size <= n // 20:
        out = rng.choice(n, size=size, replace=False, shuffle=False).astype(np.int64, copy=False)
        out.sort()
        return out
    out = np.empty(size, dtype=np.int64)
    taken = 0
    for start in range(0, n, _TILE):
        taken = _select(rng.random(min(_TILE, n - start)), start, n, size, taken, out)
        if taken == size:
            break
    return out


def take_rows(X, rows: np.ndarray) -> np.ndarray:
    """Read the rows ``rows`` (sorted) of a 2D numpy or dask array into an in-memory float64 array.

    For a dask array only the chunks holding sampled rows are read.
    """
    import dask.array as da

    if isinstance(X, da.Array):
        return np.asarray(X[rows].compute(), dtype=np.float64)
    return np.asarray(X[rows], dtype=np.float64)


def sample_dtype(dtype) -> np.dtype:
    """Return the dtype sampled values of an image of ``dtype`` are held in: float32 where it holds them exactly.

    float32 for float32 (and float16) images and for integers of at most 16 bits (all exact in float32's 24-bit
    significand); float64 otherwise.
    """
    dtype = np.dtype(dtype)
    exact32 = (dtype.kind == "f" and dtype.itemsize <= 4) or (dtype.kind in "biu" and dtype.itemsize <= 2)
    return np.dtype(np.float32 if exact32 else np.float64)


@numba.njit(cache=True, nogil=True)
def _gather_2d(block, channels, ys, xs, out, rows, columns):
    """``out[rows[i], columns[k]] = block[channels[k], ys[i], xs[i]]``. Assumes validated input."""
    for k in range(channels.shape[0]):
        for i in range(ys.shape[0]):
            out[rows[i], columns[k]] = block[channels[k], ys[i], xs[i]]


@numba.njit(cache=True, nogil=True)
def _gather_3d(block, channels, zs, ys, xs, out, rows, columns):
    """``out[rows[i], columns[k]] = block[channels[k], zs[i], ys[i], xs[i]]``. Assumes validated input."""
    for k in range(channels.shape[0]):
        for i in range(ys.shape[0]):
            out[rows[i], columns[k]] = block[channels[k], zs[i], ys[i], xs[i]]


def _gather(block, local, channels, out, rows, columns):
    """``out[rows, columns] = `` the values of ``block`` at the positions ``local`` in its channels ``channels``.

    ``local`` holds ``ndim`` arrays of positions inside the block. Only the selected values are read.
    """
    block = np.asarray(block)
    if block.dtype.kind not in "iuf":  # not a numba-typed number (bool): plain indexing
        out[rows[:, None], columns[None, :]] = block[(slice(None), *local)][channels].T
    elif len(local) == 2:
        _gather_2d(block, channels, *local, out, rows, columns)
    else:
        _gather_3d(block, channels, *local, out, rows, columns)


class _Output:
    """The sample's values array, handed to the gather tasks of an in-process scheduler, which write into it.

    A wrapper, so that dask neither hashes nor copies the array: it tokenizes as its identity.
    """

    def __init__(self, values):
        self.values = values

    def __dask_tokenize__(self):
        return ("pixelflowsom-sample-output", id(self))


def _gather_into(block, local, channels, output, rows, columns):
    """Task of an in-process scheduler: write the block's sampled values into the sample, return nothing."""
    _gather(block, local, channels, output.values, rows, columns)


def _gather_block(block, local, channels, dtype):
    """Task of an out-of-process scheduler: return the ``(m, k)`` sampled values of the block."""
    out = np.empty((len(local[0]), len(channels)), dtype=dtype)
    _gather(block, local, channels, out, np.arange(out.shape[0]), np.arange(out.shape[1]))
    return out


@numba.njit(cache=True, nogil=True)
def _nonfinite_rows(values):
    """Return the indices of the rows of ``values`` holding a non-finite value (one pass, no temporary of its size)."""
    bad = np.zeros(values.shape[0], np.bool_)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isfinite(values[i, j]):
                bad[i] = True
                break
    return np.flatnonzero(bad)


@numba.njit(cache=True, nogil=True)
def _locate(flat, shape, axis_block, axis_start, offsets, numblocks, coords, block_id):
    """Coordinates and block of every pixel of the flat (row-major) indices ``flat``; returns the pixels per block.

    Assumes validated input. Writes ``coords[i]`` (the ``([z,] y, x)`` indices) and ``block_id[i]`` (the row-major
    index of its block among ``numblocks``). Along axis ``a``, position ``q`` lies in block
    ``axis_block[offsets[a] + q]``, which starts at ``axis_start[offsets[a] + q]``.
    """
    ndim = shape.shape[0]
    counts = np.zeros(np.prod(numblocks), np.int64)
    for i in range(flat.shape[0]):
        rest = flat[i]
        for a in range(ndim - 1, -1, -1):
            coords[i, a] = rest % shape[a]
            rest //= shape[a]
        block = 0
        for a in range(ndim):
            block = block * numblocks[a] + axis_block[offsets[a] + coords[i, a]]
        block_id[i] = block
        counts[block] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _sort_by_block(block_id, coords, axis_start, offsets, starts, order, local):
    """Sort the pixels by block (a counting sort): ``order`` lists them block by block, in increasing order in each.

    Assumes validated input. ``starts[b]`` is the position of block ``b``'s first pixel in ``order``; ``local[:, k]``
    gets the position of pixel ``order[k]`` inside its block.
    """
    cursor = starts.copy()
    for i in range(block_id.shape[0]):
        k = cursor[block_id[i]]
        cursor[block_id[i]] += 1
        order[k] = i
        for a in range(coords.shape[1]):
            local[a, k] = coords[i, a] - axis_start[offsets[a] + coords[i, a]]


def _block_groups(flat, shape, chunks):
    """Locate the sampled pixels and group them by spatial block: ``(coords, order, bounds, blocks, local)``.

    ``flat`` are the sorted row-major indices of the pixels in the image's spatial ``shape``, ``chunks`` its spatial
    chunks. ``coords`` are the ``(m, ndim)`` int64 indices of the pixels. The pixels of group ``g`` are
    ``order[bounds[g]:bounds[g + 1]]`` (in increasing order), in the block ``blocks[g]`` (its ``ndim`` block indices);
    ``local`` holds every pixel's int32 position inside its block, ``(ndim, m)``, in the order of ``order``. Two
    passes over the pixels (numba; numpy's searchsorted, ravel_multi_index, argsort and gathers took 1.3 s for 10M
    pixels).
    """
    axis_block = np.concatenate([np.repeat(np.arange(len(c)), c) for c in chunks]).astype(np.int64)
    axis_start = np.concatenate([np.repeat(np.cumsum((0, *c[:-1])), c) for c in chunks]).astype(np.int64)
    offsets = np.cumsum((0, *shape[:-1])).astype(np.int64)
    numblocks = np.array([len(c) for c in chunks], dtype=np.int64)
    m = len(flat)
    coords = np.empty((m, len(shape)), dtype=np.int64)
    block_id = np.empty(m, dtype=np.int32 if numblocks.prod() < 2**31 else np.int64)
    counts = _locate(
        flat, np.asarray(shape, dtype=np.int64), axis_block, axis_start, offsets, numblocks, coords, block_id
    )
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    order = np.empty(m, dtype=np.int64)
    local = np.empty((len(shape), m), dtype=np.int32)  # a chunk holds fewer than 2**31 pixels along an axis
    _sort_by_block(block_id, coords, axis_start, offsets, starts[:-1], order, local)
    present = np.flatnonzero(counts)
    bounds = np.append(starts[present], m)
    blocks = np.stack(np.unravel_index(present, tuple(numblocks)), axis=1)
    return coords, order, bounds, blocks, local


def _plan(image, size, seed, channels, values):
    """Draw ``size`` pixels of one image; return ``(coords, tasks)``.

    ``values`` is the ``(size, k)`` output (the ``k`` channels at positions ``channels``, all for ``None``), filled
    here for a numpy-backed image. Otherwise ``tasks`` holds one entry per spatial block with
    sampled pixels and chunk of the channel axis holding selected channels, ``(block, local, channels, rows,
    columns)``: the chunk's ``Delayed`` (read as stored: the channel axis is not rechunked, so that a task holds one
    stored chunk), the pixels' positions inside it, the selected channels' positions in it, and where their values go
    in ``values``.
    """
    import dask.array as da

    data = getattr(image, "data", image)
    channels = check_channel_positions(channels, data.shape[0])  # the gather kernels read without bounds checks
    shape = data.shape[1:]
    flat = sample_indices(int(np.prod(shape)), size, seed)
    if not isinstance(data, da.Array):
        coords = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64, copy=False)
        _gather(data, tuple(coords.T), channels, values, np.arange(len(coords)), np.arange(len(channels)))
        return coords, []

    coords, order, bounds, blocks, local = _block_groups(flat, shape, data.chunks[1:])
    del flat
    channel_bounds = np.cumsum((0, *data.chunks[0]))
    delayed_blocks = data.to_delayed()
    tasks = []
    for g, block in enumerate(blocks):
        a, b = bounds[g], bounds[g + 1]
        rows = order[a:b]
        block_local = tuple(local[:, a:b])
        for ci, (c0, c1) in enumerate(zip(channel_bounds[:-1], channel_bounds[1:], strict=True)):
            columns = np.flatnonzero((channels >= c0) & (channels < c1))
            if len(columns):
                tasks.append((delayed_blocks[(ci, *block)], block_local, channels[columns] - c0, rows, columns))
    return coords, tasks


def _run_gathers(plans) -> None:
    """Read the chunks of every plan's tasks in one dask computation and put their values into the samples.

    ``plans`` holds ``(values, tasks)`` pairs: the tasks of :func:`_plan` and the output they fill.

    On an in-process scheduler (dask's threads, or synchronous) every task writes its pixels into the sample itself:
    no result is held beside it. On a ``distributed.Client`` the results are scattered into the sample as they arrive
    (at most the results in flight are held). On other schedulers (processes), all results are returned at once, then
    scattered (the sample twice in memory at most).
    """
    import dask

    jobs = [(values, task) for values, tasks in plans for task in tasks]
    if not jobs:
        return
    scheduler = active_scheduler()
    if in_process(scheduler):
        outputs = {}
        writes = []
        for values, (block, local, channels, rows, columns) in jobs:
            output = outputs.setdefault(id(values), _Output(values))
            writes.append(dask.delayed(_gather_into, pure=False)(block, local, channels, output, rows, columns))
        dask.compute(*writes, scheduler=scheduler or THREADS)
        return

    reads = [
        dask.delayed(_gather_block, pure=True)(block, local, channels, values.dtype)
        for values, (block, local, channels, _, _) in jobs
    ]

    def scatter(i, result):
        values, (_, _, _, rows, columns) = jobs[i]
        values[rows[:, None], columns[None, :]] = result

    client = distributed_client(scheduler)
    if client is None:
        for i, result in enumerate(dask.compute(*reads, scheduler=scheduler)):
            scatter(i, result)
        return
    from distributed import as_completed

    futures = client.compute(reads)
    position = {future.key: i for i, future in enumerate(futures)}
    for future, result in as_completed(futures, with_results=True):
        scatter(position[future.key], result)
        future.release()


@dataclass(frozen=True, eq=False)
class PixelSample:
    """Sampled pixels of a list of images: what :meth:`PixelFlowSOM.fit <pixelflowsom.PixelFlowSOM.fit>` trains on.

    Made by :func:`sample_pixels`; ``PixelFlowSOM.fit`` accepts it in place of the images, which lets several
    models train on one sample (reading a large store once) and lets callers keep what the model does not: the
    values and coordinates of the training pixels.

    Parameters
    ----------
    values : ndarray of shape (n, p)
        The values of the sampled pixels in the selected channels, finite, C-contiguous (pixel-major, as the online SOM
        reads it): float32 when every image is float32 (or float16, or integers of at most 16 bits, all exact in
        float32), float64 otherwise (:func:`sample_dtype`).
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


#: The fraction of the pixels sampled when neither ``fraction`` nor ``n_samples`` is given.
DEFAULT_FRACTION = 0.1


def sample_sizes(n_pixels, fraction=None, n_samples=None, *, unit="pixel") -> np.ndarray:
    """Return how many pixels are drawn from each image: ``int(fraction * n)``, or ``n_samples`` split over them.

    Parameters
    ----------
    n_pixels : sequence of int
        Number of pixels of every image.
    fraction : float or None, default=None
        In (0, 1]: every image gives ``int(fraction * n)`` pixels. ``None``: ``DEFAULT_FRACTION`` (0.1), unless
        ``n_samples`` is given.
    n_samples : int or None, default=None
        Draw this many pixels in all (every pixel if the images have fewer), split over the images in proportion to
        their pixels (:func:`apportion`). Exclusive with ``fraction``.
    unit : str, default="pixel"
        What is sampled, for the messages (``"row"`` for tables).

    Returns
    -------
    numpy.ndarray
        int64 number of pixels to draw from every image.

    Raises
    ------
    ValueError
        Both ``fraction`` and ``n_samples`` given, either out of range, or no pixel drawn at all.
    """
    if fraction is not None and n_samples is not None:
        raise ValueError(
            f"Pass fraction ({fraction!r}) or n_samples ({n_samples!r}), not both: n_samples draws a fixed number of "
            "pixels in all, fraction a share of every image."
        )
    if n_samples is not None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples={n_samples!r} must be a positive integer (a number of pixels).")
        return apportion(n_samples, n_pixels)
    fraction = DEFAULT_FRACTION if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1].")
    sizes = np.array([sample_size(n, fraction) for n in n_pixels], dtype=np.int64)
    if sizes.sum() < 1:
        raise ValueError(
            f"fraction={fraction} of the {sum(n_pixels)} {unit}s samples no {unit}; raise fraction to at least "
            f"{1 / max(n_pixels):.3g}, or pass n_samples."
        )
    return sizes


def _sample_images(images, sizes, seeds, channels):
    """Draw ``sizes[i]`` pixels of every image in its channels at positions ``channels[i]``; read them.

    Returns ``(values, coords)``: the pooled ``(m, k)`` values (C-contiguous, :func:`sample_dtype` of the images),
    image after image, and the ``(m, ndim)`` int64 coordinates. All chunk reads of all images run in one dask
    computation (:func:`_run_gathers`).
    """
    dtype = np.result_type(*(sample_dtype(image.dtype) for image in images))
    k = len(channels[0]) if channels[0] is not None else images[0].shape[0]
    bounds = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    values = np.empty((int(bounds[-1]), k), dtype=dtype)
    # Touch every page of the sample once, in order, before the reads write into it at random: first touches during
    # the reads (which map and free two chunk-sized buffers per chunk) contend with them for the kernel's memory map
    # and took 8 s more on a 10M x 20 float32 sample here (0.1-0.4 s now).
    values.fill(0)
    plans, coords = [], []
    for i, (image, size, seed, positions) in enumerate(zip(images, sizes, seeds, channels, strict=True)):
        view = values[bounds[i] : bounds[i + 1]]
        image_coords, tasks = _plan(image, size, seed, positions, view)
        plans.append((view, tasks))
        coords.append(image_coords)
    _run_gathers(plans)
    return values, np.concatenate(coords)


def sample_image(image, fraction: float, seed):
    """Sample ``int(fraction * n_pixels)`` pixels of one image (all channels), reading it chunk by chunk.

    Returns ``(values, coords)``: the ``(m, c)`` values (:func:`sample_dtype`) and the ``(m, ndim)`` int64 indices of
    the pixels, in row-major order whatever the chunking.
    """
    return _sample_images([image], [sample_size(int(np.prod(image.shape[1:])), fraction)], [seed], [None])


def sample_pixels(images, fraction=None, *, n_samples=None, channels=None, random_state=None) -> PixelSample:
    """Sample the pixels of images that :class:`~pixelflowsom.PixelFlowSOM` trains on.

    Every image gives ``int(fraction * n_pixels)`` pixels, or, with ``n_samples``, its share of ``n_samples`` (in
    proportion to its pixels). Every image, in the order given, gets its own seed, derived from ``random_state`` and
    its position, and its draw does not depend on how it is chunked; sampled pixels with a NaN (or infinite) value in
    a selected channel are then dropped. Only the chunks holding sampled pixels are read, each once, in one dask
    computation over all images; on dask's threads their values go straight into the sample (memory: the sample
    plus the chunks being read).

    Parameters
    ----------
    images : xarray.DataArray, DataTree or list of them
        Images with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")`` (see :class:`~pixelflowsom.PixelFlowSOM`).
    fraction : float or None, default=None
        In (0, 1]. ``None``: 0.1, unless ``n_samples`` is given.
    n_samples : int or None, default=None
        The number of pixels to draw in all (every pixel if the images have fewer), instead of a fraction: memory is
        then bounded whatever the size of the images. Exclusive with ``fraction``.
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
    checked, _ = _images.check_images(images)
    labels = _images.resolve_channels(channels, checked[0])
    # Positions, not a selection (image.isel(c=...)): the sampled pixels' selected channels are read where they are,
    # without a copy of every chunk's selected channels first.
    positions = [_images.channel_positions(image, labels, i) for i, image in enumerate(checked)]
    sizes = sample_sizes([int(np.prod(image.shape[1:])) for image in checked], fraction, n_samples)
    base_seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    seeds = [np.random.SeedSequence([base_seed, i]) for i in range(len(checked))]
    values, coords = _sample_images(checked, sizes, seeds, positions)
    image_index = np.repeat(np.arange(len(checked), dtype=np.int64), sizes)
    bad = _nonfinite_rows(values)
    if len(bad):
        dropped = np.bincount(image_index[bad], minlength=len(checked))
        for i, image in enumerate(checked):
            if sizes[i] and dropped[i] == sizes[i]:
                raise ValueError(
                    f"All {sizes[i]} sampled pixels of image {_images.image_name(image, i)} have a NaN (or infinite) "
                    f"value in the selected channels {labels}; select other channels, fix the image or leave it out."
                )
        keep = np.ones(len(values), dtype=bool)
        keep[bad] = False
        values, coords, image_index = values[keep], coords[keep], image_index[keep]
    return PixelSample(values, coords, image_index, labels, len(checked))
