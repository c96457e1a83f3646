"""Per-group statistics of the columns of a big table, behind :func:`~._flowsom_object.build_flowsom`.

flowsom describes every SOM node (and every metacluster) by NaN-skipping statistics of its rows: the median (pandas'
``groupby(...).median()``), the median absolute deviation (``scipy.stats.median_abs_deviation(nan_policy="omit")``),
the mean and the population standard deviation (``np.nanmean``, ``np.nanstd``), and, for the distances to the nodes,
the maximum. This module computes them in a few passes over the data:

1. :func:`sort_rows` orders the rows by ``(metacluster, node)`` (a counting sort of the number of each row's
   pair), so that every metacluster is one contiguous range of the order and every node one contiguous *piece* (or,
   when a node's rows are in several metaclusters, one piece per metacluster).
2. :func:`gather_columns` copies (some of) the channels in that order, channel-major, in float64.
3. :func:`group_stats` reduces every (group, channel) segment. The medians and the MADs (the median of the absolute
   deviations) come from a numba kernel, a selection in expected linear time: on large groups a random sample gives
   two bounds that very likely enclose the middle values, one branchless pass counts the values below and copies the
   few between them, and quickselect finishes on those. The counts, means, standard deviations and maxima are numpy
   reductions of every group's slice.

numba only where it wins clearly (more than 2x). Every piece was measured against the fastest numpy/pandas code
giving the same values, side by side in one process (best of 5-30 runs on 2 shared cores), with 100 nodes in 10
metaclusters and the rows in random node order. Times for 1.68M x 20 / 1.34M x 40 float64 rows (a 4096^2 image at
fraction 0.1 / an 8192^2 one at 0.02), numba on 2 threads:

- sort by (metacluster, node): the former all-numba kernel 14 / 6 ms (63 / 19 ms when nodes span metaclusters),
  numpy's stable argsort of the rows' 8-bit pair numbers 35 / 18 ms (2-3x). Kept: numpy numbers the pairs and finds
  the pieces, an 8-line numba counting sort (:func:`_counting_sort`) orders the rows: 12 / 10 ms (13 / 10 ms).
- gather, the channel-major float64 copy: numba 541 / 988 ms (sample layout, channels contiguous), 233 / 266 ms
  (row-major float32); numpy 265 / 381 ms, 179 / 198 ms (0.4-0.8x). numpy (``take`` with ``mode="clip"``).
- medians per node: numba 151 / 209 ms, ``np.median`` of every node's slice 590 / 911 ms (3.9-4.4x); medians and
  MADs per node: 223 / 344 ms against 1192 / 1563 ms (4.5-5.4x); medians per metacluster: 135 / 113 ms against
  446 / 490 ms (3.3-4.3x); medians and MADs of the distances: 14 / 14 ms against 67 / 52 ms (3.7-5.0x). pandas'
  ``groupby().median()`` sorts and copies the table itself at every call and needs ``|X - median|`` as a table: the
  node medians, MADs and metacluster medians take it 3201 / 3456 ms and 538 / 838 MB at peak, against 879 /
  1022 ms and 282 / 432 MB for sort, copy and numba (3.4-3.6x). numba kept (:func:`_median_kernel`).
- at harpy's own benchmark scale (10M x 20 float32 rows, row-major, 100 nodes in 10 metaclusters; the sample of a
  20 x 10000^2 image at fraction 0.1): sort, copy in blocks of 7 channels and numba for the node medians, MADs and
  metacluster medians 1.8 s, pandas' ``groupby().median()`` of the frame, of ``|X - median|`` and by metacluster
  16.1 s (8.8x).
- means and population standard deviations per node: numba 84 / 136 ms, numpy 94 / 120 ms (0.9-1.1x). numpy.
- maxima of the distances per node: numba 5.0 / 2.9 ms, numpy (``np.fmax.reduce``) 2.5 / 1.5 ms. numpy.
- count_above (the outlier table): numba 2.2 / 0.7 ms, numpy (``np.count_nonzero``) 0.9 / 0.4 ms. numpy.

The numpy reductions loop over the groups (about 100), each call reducing a whole ``(channels, rows)`` slice.

Medians are exact: the middle value, or the mean ``(a + b) / 2`` of the two middle values on even counts, as pandas
and numpy take it. Means and standard deviations are numpy's (pairwise sums along each group's slice); flowsom sums
the same values in another order, so they may differ from flowsom's in the last bits.

The median kernel releases the GIL and is a pure function of its arrays (no ``parallel=True``), so that callers on
several threads are safe; :func:`group_stats` runs it on disjoint slices of the output from a thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from pixelflowsom._nearest import thread_count

__all__ = ["GroupStats", "RowOrder", "count_above", "gather_columns", "group_stats", "sort_rows"]

#: Groups at least this large get their order statistics from a sample first (:func:`_order_stats`).
_SAMPLE_MIN = 1024
#: Rows per block when :func:`gather_columns` reads a row-major table (the block stays in L2 cache while transposed).
_GATHER_ROWS = 4096


def _run(tasks, n_threads: int) -> None:
    """Call every function of ``tasks``: in a pool of ``n_threads`` threads, or in this thread for a single one."""
    n_threads = min(n_threads, len(tasks))
    if n_threads <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(n_threads) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


# ---------------------------------------------------------------------------------------------------------------------
# Ordering the rows


@dataclass(frozen=True, eq=False)
class RowOrder:
    """The rows ordered by ``(metacluster, node)``, and where every node and metacluster lies in that order.

    Parameters
    ----------
    perm
        ``(n,)`` int64: ``perm[k]`` is the row at position ``k`` of the order (stable: rows of a group keep their
        order).
    node_starts, node_stops, node_ptr
        The pieces of the nodes: node ``j`` is the positions ``node_starts[i]:node_stops[i]`` for ``i`` in
        ``node_ptr[j]:node_ptr[j + 1]``, in order (one piece per metacluster the node has rows in).
    meta_bounds
        ``(n_metaclusters + 1,)`` int64: metacluster ``m`` is the positions ``meta_bounds[m]:meta_bounds[m + 1]``.
    """

    perm: np.ndarray
    node_starts: np.ndarray
    node_stops: np.ndarray
    node_ptr: np.ndarray
    meta_bounds: np.ndarray

    @property
    def meta_pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, stops, ptr)`` of the metaclusters, one piece each (the arguments of :func:`group_stats`)."""
        bounds = self.meta_bounds
        return bounds[:-1], bounds[1:], np.arange(len(bounds), dtype=np.int64)

    @property
    def node_pieces(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, stops, ptr)`` of the nodes (the arguments of :func:`group_stats`)."""
        return self.node_starts, self.node_stops, self.node_ptr


def _cumulative(counts) -> np.ndarray:
    """``[0, counts[0], counts[0] + counts[1], ...]`` as int64."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _rank_dtype(n: int) -> type:
    """Return the smallest unsigned dtype that holds ``n`` ranks."""
    return np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.int64


@numba.njit(cache=True, nogil=True)
def _counting_sort(rank, starts):
    """Return the stable order of the rows by ``rank`` (``np.argsort(rank, kind="stable")``), in one pass.

    Assumes validated input: ``starts[r]`` is the number of rows of rank below ``r``.
    """
    cursor = starts.copy()
    perm = np.empty(rank.shape[0], np.int64)
    for i in range(rank.shape[0]):
        r = rank[i]
        perm[cursor[r]] = i
        cursor[r] += 1
    return perm


def sort_rows(nodes, n_nodes: int, metas, n_metas: int) -> RowOrder:
    """Order the rows by ``(metacluster, node)``; see :class:`RowOrder`.

    Assumes validated input. The ``(metacluster, node)`` pairs present are numbered in order (numpy) and the rows
    sorted by their pair's number with a counting sort (numba: 2-3x faster than numpy's stable argsort, a radix sort
    on these 8-bit keys).

    Parameters
    ----------
    nodes
        ``(n,)`` integer node of every row, in ``[0, n_nodes)``.
    n_nodes
        Number of nodes.
    metas
        ``(n,)`` integer metacluster of every row, in ``[0, n_metas)``.
    n_metas
        Number of metaclusters.

    Returns
    -------
    RowOrder
        The order and the positions of the groups in it.
    """
    n_nodes, n_metas = int(n_nodes), int(n_metas)
    key = np.asarray(metas, dtype=np.int64) * n_nodes
    key += np.asarray(nodes, dtype=np.int64)
    n_keys = n_nodes * n_metas
    if n_keys <= 2 * len(key) + (1 << 16):  # count the pairs
        sizes = np.bincount(key, minlength=n_keys)
        pairs = np.flatnonzero(sizes)
        sizes = sizes[pairs]
        rank = np.zeros(n_keys, dtype=_rank_dtype(len(pairs)))
        rank[pairs] = np.arange(len(pairs))
        rank = rank[key]
    else:  # too many possible pairs to count: sort them
        pairs, rank, sizes = np.unique(key, return_inverse=True, return_counts=True)
        rank = rank.astype(_rank_dtype(len(pairs)))
    del key
    bounds = _cumulative(sizes)
    perm = _counting_sort(rank, bounds[:-1])
    piece_node = pairs % n_nodes
    by_node = np.argsort(piece_node, kind="stable")  # the pieces node by node, in metacluster order
    return RowOrder(
        perm=perm,
        node_starts=bounds[:-1][by_node],
        node_stops=bounds[1:][by_node],
        node_ptr=_cumulative(np.bincount(piece_node, minlength=n_nodes)),
        meta_bounds=bounds[np.searchsorted(pairs, np.arange(n_metas + 1) * n_nodes)],
    )


# ---------------------------------------------------------------------------------------------------------------------
# Gathering the columns


def gather_columns(X, perm, channels=None, dtype=np.float64) -> np.ndarray:
    """Copy the rows ``perm`` of ``X`` channel-major: ``X[perm][:, channels].T``, as ``dtype``.

    Parameters
    ----------
    X
        ``(n, p)`` real array, any memory layout.
    perm
        ``(m,)`` row indices, in ``[0, n)`` (not checked).
    channels
        The columns to copy (anything that indexes ``range(p)``, e.g. a slice); default: all.
    dtype
        Float dtype of the copy (float32 holds float32 values as they are, in half the memory).

    Returns
    -------
    numpy.ndarray
        ``(len(channels), m)`` C-contiguous, of ``dtype``.

    Notes
    -----
    When every channel of ``X`` is contiguous (``X`` is the transpose of a C-contiguous ``(p, n)`` array) the
    channels are gathered one by one with :func:`numpy.take`; otherwise the rows are gathered in blocks of
    ``_GATHER_ROWS`` and transposed, so that no temporary is larger than one block. ``mode="clip"``: numpy then
    writes straight into the output (``mode="raise"`` buffers it, 2x slower).
    """
    X = np.asarray(X)
    perm = np.asarray(perm, dtype=np.int64)
    channels = np.arange(X.shape[1])[slice(None) if channels is None else channels]
    out = np.empty((len(channels), len(perm)), dtype=dtype)
    if X.strides[0] == X.itemsize:  # contiguous channels
        for k, c in enumerate(channels):
            if X.dtype == out.dtype:
                np.take(X[:, c], perm, out=out[k], mode="clip")
            else:
                out[k] = X[:, c].take(perm, mode="clip")
        return out
    every = len(channels) == X.shape[1] and (channels == np.arange(X.shape[1])).all()
    for a in range(0, len(perm), _GATHER_ROWS):
        rows = np.take(X, perm[a : a + _GATHER_ROWS], axis=0, mode="clip")
        out[:, a : a + _GATHER_ROWS] = (rows if every else rows[:, channels]).T
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Statistics of the groups


@numba.njit(cache=True, nogil=True)
def _next_random(state):
    """One step of a 64-bit linear congruential generator (Knuth's MMIX constants); wraps around."""
    return state * 6364136223846793005 + 1442695040888963407


@numba.njit(cache=True, nogil=True)
def _random_index(state, n):
    """Draw an index in ``[0, n)``, ``n < 2 ** 32`` (multiply-shift, no division); returns it and the new state."""
    state = _next_random(state)
    return (((state >> 33) & 0x7FFFFFFF) * n) >> 31, state


@numba.njit(cache=True, nogil=True)
def _select(a, lo, hi, k, state):
    """Reorder ``a[lo:hi]`` so that ``a[k]`` is its ``k - lo``-th smallest value, ``a[lo:k] <= a[k] <= a[k + 1 : hi]``.

    Assumes validated input: ``lo <= k < hi <= len(a)`` and no NaN in ``a[lo:hi]``. Quickselect around the median of
    three values drawn at random (so that no order of the data, sorted, organ pipe, ..., is a bad case), with a
    branchless partition: values below the pivot to the left. When none is below, the pivot is the minimum and the
    values equal to it are split off instead, so that ties cost one pass. ``state`` seeds the generator; returns the
    new state.
    """
    while hi - lo > 1:
        span = hi - lo
        j, state = _random_index(state, span)
        x = a[lo + j]
        j, state = _random_index(state, span)
        y = a[lo + j]
        j, state = _random_index(state, span)
        z = a[lo + j]
        pivot = max(min(x, y), min(max(x, y), z))
        i = lo
        for j in range(lo, hi):
            v = a[j]
            a[j] = a[i]
            a[i] = v
            i += v < pivot
        if k < i:
            hi = i
        elif i > lo:
            lo = i
        else:  # the pivot is the minimum: the values equal to it to the left
            for j in range(lo, hi):
                v = a[j]
                a[j] = a[i]
                a[i] = v
                i += v <= pivot
            if k < i:
                break
            lo = i
    return state


@numba.njit(cache=True, nogil=True)
def _order_stats(a, m, k, center, band, state):
    """Find the ``k``-th and ``(k - 1)``-th smallest (``k >= 1``) of ``a[:m]``, or of ``|a[:m] - center|``.

    Assumes validated input: no NaN in ``a[:m]``, ``center`` finite or NaN (then the values themselves), ``band`` a
    scratch array of at least ``m`` values; ``a`` is left as it is. For large ``m``, a random sample of about
    ``m ** (2 / 3)`` values gives two bounds that very likely enclose both order statistics; one branchless pass
    counts the values below the lower bound and copies those between the bounds (a small fraction) to ``band``, where
    the order statistics are selected. When the bounds miss (rarely), all values are copied and selected from.

    Returns
    -------
    kth, previous, state
        The order statistics and the new generator state.
    """
    deviations = not np.isnan(center)
    if m >= _SAMPLE_MIN:
        s = int(m ** (2.0 / 3.0))
        for t in range(s):
            j, state = _random_index(state, m)
            band[t] = abs(a[j] - center) if deviations else a[j]
        delta = int(1.5 * np.sqrt(s)) + 1
        target = (k * s) // m
        r_lo = target - delta - 1
        r_hi = target + delta
        low = -np.inf
        high = np.inf
        first = 0
        if r_lo >= 0:
            state = _select(band, 0, s, r_lo, state)
            low = band[r_lo]
            first = r_lo + 1
        if r_hi < s:
            state = _select(band, first, s, r_hi, state)
            high = band[r_hi]
        below = 0
        n_band = 0
        if deviations:
            for i in range(m):
                v = abs(a[i] - center)
                below += v < low
                band[n_band] = v
                n_band += (v >= low) & (v <= high)
        else:
            for i in range(m):
                v = a[i]
                below += v < low
                band[n_band] = v
                n_band += (v >= low) & (v <= high)
        kk = k - below
        if 1 <= kk < n_band:
            if low == high:
                return low, low, state
            state = _select(band, 0, n_band, kk, state)
            previous = band[0]
            for i in range(1, kk):
                previous = max(previous, band[i])
            return band[kk], previous, state
    for i in range(m):
        band[i] = abs(a[i] - center) if deviations else a[i]
    state = _select(band, 0, m, k, state)
    previous = band[0]
    for i in range(1, k):
        previous = max(previous, band[i])
    return band[k], previous, state


@numba.njit(cache=True, nogil=True)
def _median(a, m, center, band, state):
    """Median of ``a[:m]`` (or of ``|a[:m] - center|``), the mean of the two middle values on even ``m``.

    Assumes validated input, as :func:`_order_stats` (``m >= 1``). Returns the median and the new generator state.
    """
    if m == 1:
        return abs(a[0] - center) if not np.isnan(center) else a[0], state
    upper, lower, state = _order_stats(a, m, m // 2, center, band, state)
    if m % 2 == 1:
        return upper, state
    return (lower + upper) / 2, state


@numba.njit(cache=True, nogil=True)
def _median_kernel(values, starts, stops, ptr, median, mad):
    """NaN-skipping medians and median absolute deviations of the groups of ``values``.

    Assumes validated input. Group ``g`` is the values ``values[starts[i]:stops[i]]`` for ``i`` in
    ``ptr[g]:ptr[g + 1]``. Each output has one entry per group, or is empty to skip that statistic; a group without
    non-NaN values gets NaN. ``values`` is only read: a group that is one piece without NaN is reduced in place, the
    others from a copy of their non-NaN values.

    Parameters
    ----------
    values
        ``(n,)`` float64 or float32 (order statistics are taken in float64: exact for float32 values).
    starts, stops, ptr
        int64 pieces of the groups.
    median
        float64 output: median (pandas ``groupby(...).median()``).
    mad
        float64 output: median absolute deviation from the median (``scipy.stats.median_abs_deviation`` with
        ``nan_policy="omit"``: NaN when a deviation is NaN, i.e. an infinite median of infinite values).
    """
    n_groups = ptr.shape[0] - 1
    want_median = median.shape[0] > 0
    want_mad = mad.shape[0] > 0
    largest = 0
    for g in range(n_groups):
        size = 0
        for piece in range(ptr[g], ptr[g + 1]):
            size += stops[piece] - starts[piece]
        largest = max(largest, size)
    buf = np.empty(0, values.dtype)
    band = np.empty(largest, np.float64)
    state = np.int64(0x2545F4914F6CDD1D)
    for g in range(n_groups):
        n_nan = 0
        for piece in range(ptr[g], ptr[g + 1]):
            for i in range(starts[piece], stops[piece]):
                n_nan += np.isnan(values[i])
        if n_nan == 0 and ptr[g + 1] - ptr[g] == 1:  # one piece without NaN: read it in place
            a = values[starts[ptr[g]] : stops[ptr[g]]]
            m = a.shape[0]
        else:  # gather the non-NaN values
            if buf.shape[0] == 0:
                buf = np.empty(largest, values.dtype)
            m = 0
            for piece in range(ptr[g], ptr[g + 1]):
                for i in range(starts[piece], stops[piece]):
                    v = values[i]
                    buf[m] = v
                    m += not np.isnan(v)
            a = buf
        if m == 0:
            if want_median:
                median[g] = np.nan
            if want_mad:
                mad[g] = np.nan
            continue
        center, state = _median(a, m, np.nan, band, state)
        if want_median:
            median[g] = center
        if want_mad:
            if np.isfinite(center):
                mad[g], state = _median(a, m, center, band, state)
            else:  # |x - center| is NaN where x is center (or everywhere if center is NaN), else infinite
                spread = np.inf
                for i in range(m):
                    if np.isnan(abs(a[i] - center)):
                        spread = np.nan
                mad[g] = spread


class GroupStats(NamedTuple):
    """Statistics of every group (row) and channel (column), ``None`` where not asked for; see :func:`group_stats`."""

    count: np.ndarray
    median: np.ndarray | None
    mad: np.ndarray | None
    mean: np.ndarray | None
    sd: np.ndarray | None
    maximum: np.ndarray | None


def _group_chunks(sizes: np.ndarray, n_chunks: int) -> np.ndarray:
    """Bounds of ``n_chunks`` (at most) contiguous runs of groups with about equal numbers of values."""
    if n_chunks <= 1 or len(sizes) <= 1:
        return np.array([0, len(sizes)], dtype=np.int64)
    cumulative = np.cumsum(sizes)
    targets = cumulative[-1] * np.arange(1, n_chunks) / n_chunks
    inner = np.searchsorted(cumulative, targets, side="right")
    return np.unique(np.concatenate([[0], inner, [len(sizes)]])).astype(np.int64)


def _medians(columns, starts, stops, ptr, median: bool, mad: bool, n_threads: int):
    """``(p, n_groups)`` medians and MADs (empty when not asked for) from the kernel, in parallel."""
    p = columns.shape[0]
    n_groups = len(ptr) - 1
    out = {key: np.empty((p, n_groups if want else 0)) for key, want in (("median", median), ("mad", mad))}
    piece_bounds = _cumulative(stops - starts)
    sizes = piece_bounds[ptr[1:]] - piece_bounds[ptr[:-1]]
    chunks = _group_chunks(sizes, -(-4 * n_threads // max(p, 1)) if n_threads > 1 else 1)

    def part(c, g0, g1):
        def run():
            row = {key: value[c, g0:g1] if value.shape[1] else value[c] for key, value in out.items()}
            _median_kernel(columns[c], starts, stops, ptr[g0 : g1 + 1], **row)

        return run

    _run([part(c, g0, g1) for c in range(p) for g0, g1 in zip(chunks[:-1], chunks[1:], strict=True)], n_threads)
    return out["median"], out["mad"]


def _moments(columns, starts, stops, ptr, spread: bool, maximum: bool):
    """``(n_groups, p)`` counts of non-NaN values, and means, population standard deviations and maxima (or None).

    numpy reductions of every group's ``(p, size)`` slice (a copy when the group has several pieces); NaN values are
    skipped as ``np.nanmean`` and ``np.nanstd`` skip them (replaced by 0 in the sums, and not counted).
    """
    p = columns.shape[0]
    n_groups = len(ptr) - 1
    count = np.zeros((n_groups, p), dtype=np.int64)
    mean = np.full((n_groups, p), np.nan) if spread else None
    sd = np.full((n_groups, p), np.nan) if spread else None
    top = np.full((n_groups, p), np.nan) if maximum else None
    for g in range(n_groups):
        if ptr[g + 1] == ptr[g]:  # no row
            continue
        if ptr[g + 1] - ptr[g] == 1:
            seg = columns[:, starts[ptr[g]] : stops[ptr[g]]]
        else:
            seg = np.concatenate([columns[:, starts[i] : stops[i]] for i in range(ptr[g], ptr[g + 1])], axis=1)
        nan = np.isnan(seg)
        count[g] = seg.shape[1] - np.count_nonzero(nan, axis=1)
        if maximum:
            top[g] = np.fmax.reduce(seg, axis=1)  # NaN skipped; NaN when all are
        if not spread:
            continue
        if count[g].min() == seg.shape[1]:  # no NaN
            mean[g] = seg.mean(axis=1, dtype=np.float64)
            sd[g] = seg.std(axis=1, dtype=np.float64)
            continue
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 = NaN where a channel is all NaN
            mu = np.where(nan, 0.0, seg).sum(axis=1, dtype=np.float64) / count[g]
            deviations = np.where(nan, 0.0, seg - mu[:, None])
            mean[g] = mu
            sd[g] = np.sqrt(np.einsum("ij,ij->i", deviations, deviations) / count[g])
    return count, mean, sd, top


def group_stats(
    columns,
    starts,
    stops,
    ptr,
    *,
    median: bool = True,
    mad: bool = False,
    spread: bool = False,
    maximum: bool = False,
    n_threads=None,
) -> GroupStats:
    """NaN-skipping statistics of the groups of every channel of ``columns``.

    Parameters
    ----------
    columns
        ``(p, n)`` values, channel-major (e.g. from :func:`gather_columns`); a channel is a row. float32 values are
        reduced as they are, in float64 arithmetic (other dtypes are converted to float64 first).
    starts, stops, ptr
        The groups: group ``g`` is the positions ``starts[i]:stops[i]`` for ``i`` in ``ptr[g]:ptr[g + 1]`` (see
        :class:`RowOrder`).
    median
        Compute the medians (pandas ``groupby(...).median()``).
    mad
        Compute the median absolute deviations from the medians (``scipy.stats.median_abs_deviation`` with
        ``nan_policy="omit"``).
    spread
        Compute the means and population standard deviations (``np.nanmean``, ``np.nanstd``).
    maximum
        Compute the maxima (pandas ``groupby(...).max()``).
    n_threads
        Number of threads of the median kernel, which runs in parallel over channels and groups (default:
        ``os.cpu_count()``).

    Returns
    -------
    GroupStats
        ``(n_groups, p)`` arrays: ``count`` (int64 number of non-NaN values) and the float64 statistics asked for.
        Groups without non-NaN values in a channel get NaN there.
    """
    columns = np.asarray(columns)
    columns = np.ascontiguousarray(columns, dtype=columns.dtype if columns.dtype.kind == "f" else np.float64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    stops = np.ascontiguousarray(stops, dtype=np.int64)
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    count, mean, sd, top = _moments(columns, starts, stops, ptr, spread, maximum)
    medians = mads = None
    if median or mad:
        medians, mads = _medians(columns, starts, stops, ptr, median, mad, thread_count(n_threads))
    return GroupStats(
        count=count,
        median=np.ascontiguousarray(medians.T) if median else None,
        mad=np.ascontiguousarray(mads.T) if mad else None,
        mean=mean,
        sd=sd,
        maximum=top,
    )


def count_above(values, starts, stops, ptr, thresholds) -> np.ndarray:
    """Count the values of every group above the group's threshold (NaN values and thresholds count as not above).

    Parameters
    ----------
    values
        ``(n,)`` float64 values.
    starts, stops, ptr
        The groups, as for :func:`group_stats`.
    thresholds
        ``(n_groups,)`` thresholds.

    Returns
    -------
    numpy.ndarray
        ``(n_groups,)`` int64 counts.
    """
    values = np.asarray(values, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    out = np.zeros(len(ptr) - 1, dtype=np.int64)
    for g in range(len(out)):
        for i in range(ptr[g], ptr[g + 1]):
            out[g] += np.count_nonzero(values[starts[i] : stops[i]] > thresholds[g])
    return out
