"""Per-group statistics of the columns of a big table: numba kernels behind :func:`~._flowsom_object.build_flowsom`.

flowsom describes every SOM node (and every metacluster) by NaN-skipping statistics of its rows: the median (pandas'
``groupby(...).median()``), the median absolute deviation (``scipy.stats.median_abs_deviation(nan_policy="omit")``),
the mean and the population standard deviation (``np.nanmean``, ``np.nanstd``), and, for the distances to the nodes,
the maximum. This module computes them in a few passes over the data:

1. :func:`sort_rows` orders the rows by ``(metacluster, node)`` with counting sorts, so that every metacluster is one
   contiguous range of the order and every node one contiguous *piece* (or, when a node's rows are in several
   metaclusters, one piece per metacluster).
2. :func:`gather_columns` copies the table once in that order, channel-major: ``(p, n)`` float64.
3. :func:`group_stats` reduces every (group, channel) segment: read in place when it is one piece without NaN, else
   its non-NaN values first copied to a scratch buffer. The mean and standard deviation come from blocked sums, the
   median and the MAD (the median of the absolute deviations) from a selection in expected linear time: on large
   groups a random sample gives two bounds that very likely enclose the middle values, one branchless pass counts
   the values below and copies the few between them, and quickselect finishes on those.

Medians are exact: the middle value, or the mean ``(a + b) / 2`` of the two middle values on even counts, as pandas
and numpy take it. Sums follow another order than numpy's pairwise summation and may differ in the last bits.

The kernels release the GIL and are pure functions of their arrays (no ``parallel=True``), so that callers on
several threads are safe; the wrappers run them on disjoint slices of the output from a thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from pixelflowsom._nearest import thread_count

__all__ = ["GroupStats", "RowOrder", "count_above", "gather_columns", "group_stats", "sort_rows"]

#: Values per summation block (eight accumulators each, as at the leaves of numpy's pairwise summation).
_SUM_BLOCK = 128
#: Groups at least this large get their order statistics from a sample first (:func:`_order_stats`).
_SAMPLE_MIN = 1024
#: Dtypes the kernels read directly; others are converted to float64 first.
_NATIVE = frozenset(np.dtype(t) for t in ("f8", "f4", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?"))


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


@numba.njit(cache=True, nogil=True)
def _sort_kernel(nodes, n_nodes, metas, n_metas):
    """Order the rows by ``(metas, nodes)`` and find the pieces of every node and the range of every metacluster.

    Assumes validated input: ``nodes`` in ``[0, n_nodes)`` and ``metas`` in ``[0, n_metas)``, both of length ``n``.
    When the rows of every node share a metacluster (the metacluster is the node's), one stable counting sort with
    the nodes ordered by metacluster does, and every node is one piece. Otherwise two stable counting sorts, by node
    and then by metacluster (least significant key first), and the pieces are the runs of equal node within each
    metacluster.

    Parameters
    ----------
    nodes, metas
        ``(n,)`` int64 labels.
    n_nodes, n_metas
        Number of nodes and of metaclusters.

    Returns
    -------
    perm, node_starts, node_stops, node_ptr, meta_bounds : numpy.ndarray
        int64; see :class:`RowOrder`.
    """
    n = nodes.shape[0]
    size = np.zeros(n_nodes, np.int64)
    node_meta = np.full(n_nodes, -1, np.int64)
    shared = True
    for i in range(n):
        j = nodes[i]
        size[j] += 1
        if node_meta[j] != metas[i]:
            if node_meta[j] >= 0:
                shared = False
                break
            node_meta[j] = metas[i]
    node_ptr = np.zeros(n_nodes + 1, np.int64)
    meta_bounds = np.zeros(n_metas + 1, np.int64)
    perm = np.empty(n, np.int64)

    if shared:
        for j in range(n_nodes):
            if size[j] > 0:
                meta_bounds[node_meta[j] + 1] += size[j]
        for m in range(n_metas):
            meta_bounds[m + 1] += meta_bounds[m]
        fill = meta_bounds[:-1].copy()
        cursor = np.zeros(n_nodes, np.int64)
        for j in range(n_nodes):  # a metacluster's nodes in node order
            node_ptr[j + 1] = node_ptr[j] + (size[j] > 0)
            if size[j] > 0:
                cursor[j] = fill[node_meta[j]]
                fill[node_meta[j]] += size[j]
        node_starts = np.empty(node_ptr[n_nodes], np.int64)
        node_stops = np.empty(node_ptr[n_nodes], np.int64)
        for j in range(n_nodes):
            if size[j] > 0:
                node_starts[node_ptr[j]] = cursor[j]
                node_stops[node_ptr[j]] = cursor[j] + size[j]
        for i in range(n):
            j = nodes[i]
            perm[cursor[j]] = i
            cursor[j] += 1
        return perm, node_starts, node_stops, node_ptr, meta_bounds

    # by node, carrying the metacluster along
    size[:] = 0
    for i in range(n):
        size[nodes[i]] += 1
    node_bounds = np.zeros(n_nodes + 1, np.int64)
    for j in range(n_nodes):
        node_bounds[j + 1] = node_bounds[j] + size[j]
    cursor = node_bounds[:-1].copy()
    by_node = np.empty(n, np.int64)
    by_node_meta = np.empty(n, np.int64)
    for i in range(n):
        j = nodes[i]
        by_node[cursor[j]] = i
        by_node_meta[cursor[j]] = metas[i]
        cursor[j] += 1
    # then by metacluster, stably
    for i in range(n):
        meta_bounds[metas[i] + 1] += 1
    for m in range(n_metas):
        meta_bounds[m + 1] += meta_bounds[m]
    fill = meta_bounds[:-1].copy()
    sorted_nodes = np.empty(n, np.int64)
    for j in range(n_nodes):
        for k in range(node_bounds[j], node_bounds[j + 1]):
            m = by_node_meta[k]
            perm[fill[m]] = by_node[k]
            sorted_nodes[fill[m]] = j
            fill[m] += 1
    # the runs of equal node within every metacluster, counted per node, then listed node by node
    for m in range(n_metas):
        for k in range(meta_bounds[m], meta_bounds[m + 1]):
            if k == meta_bounds[m] or sorted_nodes[k] != sorted_nodes[k - 1]:
                node_ptr[sorted_nodes[k] + 1] += 1
    for j in range(n_nodes):
        node_ptr[j + 1] += node_ptr[j]
    node_starts = np.empty(node_ptr[n_nodes], np.int64)
    node_stops = np.empty(node_ptr[n_nodes], np.int64)
    piece = node_ptr[:-1].copy()
    for m in range(n_metas):
        k = meta_bounds[m]
        while k < meta_bounds[m + 1]:
            j = sorted_nodes[k]
            stop = k + 1
            while stop < meta_bounds[m + 1] and sorted_nodes[stop] == j:
                stop += 1
            node_starts[piece[j]] = k
            node_stops[piece[j]] = stop
            piece[j] += 1
            k = stop
    return perm, node_starts, node_stops, node_ptr, meta_bounds


def sort_rows(nodes, n_nodes: int, metas, n_metas: int) -> RowOrder:
    """Order the rows by ``(metacluster, node)``; see :class:`RowOrder`.

    Assumes validated input.

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
    nodes = np.ascontiguousarray(nodes, dtype=np.int64)
    metas = np.ascontiguousarray(metas, dtype=np.int64)
    return RowOrder(*_sort_kernel(nodes, int(n_nodes), metas, int(n_metas)))


# ---------------------------------------------------------------------------------------------------------------------
# Gathering the columns


@numba.njit(cache=True, nogil=True)
def _gather_kernel(X, perm, out):
    """``out[c, k] = X[perm[k], c]`` as float64.

    Assumes validated input: ``X`` is ``(n, p)`` of any real dtype and memory layout, ``perm`` indexes its rows and
    ``out`` is ``(p, len(perm))`` float64.
    """
    p = X.shape[1]
    for k in range(perm.shape[0]):
        i = perm[k]
        for c in range(p):
            out[c, k] = np.float64(X[i, c])


def gather_columns(X, perm, *, n_threads=None) -> np.ndarray:
    """Copy the rows ``perm`` of ``X`` channel-major, in float64: ``X[perm].T``, in one parallel pass.

    Parameters
    ----------
    X
        ``(n, p)`` real array, any memory layout.
    perm
        ``(m,)`` row indices.
    n_threads
        Number of threads (default: ``os.cpu_count()``).

    Returns
    -------
    numpy.ndarray
        ``(p, m)`` C-contiguous float64.
    """
    X = np.asarray(X)
    if X.dtype not in _NATIVE:
        X = X.astype(np.float64)
    perm = np.ascontiguousarray(perm, dtype=np.int64)
    m = len(perm)
    out = np.empty((X.shape[1], m), dtype=np.float64)
    n_threads = min(thread_count(n_threads), max(1, m // 32768))
    n_parts = 1 if n_threads == 1 else 4 * n_threads
    bounds = np.linspace(0, m, n_parts + 1).astype(np.int64)

    def part(a, b):
        return lambda: _gather_kernel(X, perm[a:b], out[:, a:b])

    _run([part(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a], n_threads)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Statistics of the groups


@numba.njit(cache=True, nogil=True)
def _blocked_sum(a, m, shift):
    """``sum((a[:m] - shift) ** 2)`` if ``shift`` is not NaN, else ``sum(a[:m])``; eight accumulators per block."""
    square = not np.isnan(shift)
    total = 0.0
    for b0 in range(0, m, _SUM_BLOCK):
        b1 = min(m, b0 + _SUM_BLOCK)
        r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = 0.0
        i = b0
        if square:
            while i + 8 <= b1:
                d0 = a[i] - shift
                d1 = a[i + 1] - shift
                d2 = a[i + 2] - shift
                d3 = a[i + 3] - shift
                d4 = a[i + 4] - shift
                d5 = a[i + 5] - shift
                d6 = a[i + 6] - shift
                d7 = a[i + 7] - shift
                r0 += d0 * d0
                r1 += d1 * d1
                r2 += d2 * d2
                r3 += d3 * d3
                r4 += d4 * d4
                r5 += d5 * d5
                r6 += d6 * d6
                r7 += d7 * d7
                i += 8
        else:
            while i + 8 <= b1:
                r0 += a[i]
                r1 += a[i + 1]
                r2 += a[i + 2]
                r3 += a[i + 3]
                r4 += a[i + 4]
                r5 += a[i + 5]
                r6 += a[i + 6]
                r7 += a[i + 7]
                i += 8
        block = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < b1:
            if square:
                d = a[i] - shift
                block += d * d
            else:
                block += a[i]
            i += 1
        total += block
    return total


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
def _stats_kernel(values, starts, stops, ptr, count, median, mad, mean, sd, maximum):
    """NaN-skipping statistics of the groups of ``values``.

    Assumes validated input. Group ``g`` is the values ``values[starts[i]:stops[i]]`` for ``i`` in
    ``ptr[g]:ptr[g + 1]``. Each output has one entry per group, or is empty to skip that statistic; a group without
    non-NaN values gets NaN (and a count of 0). ``values`` is only read: a group that is one piece without NaN is
    reduced in place, the others from a copy of their non-NaN values.

    Parameters
    ----------
    values
        ``(n,)`` float64.
    starts, stops, ptr
        int64 pieces of the groups.
    count
        int64 output: number of non-NaN values.
    median
        float64 output: median (pandas ``groupby(...).median()``).
    mad
        float64 output: median absolute deviation from the median (``scipy.stats.median_abs_deviation`` with
        ``nan_policy="omit"``: NaN when a deviation is NaN, i.e. an infinite median of infinite values).
    mean, sd
        float64 outputs: mean and population standard deviation (``np.nanmean``, ``np.nanstd``); both or neither.
    maximum
        float64 output: maximum.
    """
    n_groups = ptr.shape[0] - 1
    want_count = count.shape[0] > 0
    want_median = median.shape[0] > 0
    want_mad = mad.shape[0] > 0
    want_spread = mean.shape[0] > 0
    want_max = maximum.shape[0] > 0
    largest = 0
    for g in range(n_groups):
        size = 0
        for piece in range(ptr[g], ptr[g + 1]):
            size += stops[piece] - starts[piece]
        largest = max(largest, size)
    buf = np.empty(0, np.float64)
    band = np.empty(largest, np.float64)
    state = np.int64(0x2545F4914F6CDD1D)
    for g in range(n_groups):
        n_nan = 0
        size = 0
        for piece in range(ptr[g], ptr[g + 1]):
            size += stops[piece] - starts[piece]
            for i in range(starts[piece], stops[piece]):
                n_nan += np.isnan(values[i])
        m = size - n_nan
        if n_nan == 0 and ptr[g + 1] - ptr[g] == 1:  # one piece without NaN: read it in place
            a = values[starts[ptr[g]] : stops[ptr[g]]]
        else:  # gather the non-NaN values
            if buf.shape[0] == 0:
                buf = np.empty(largest, np.float64)
            j = 0
            for piece in range(ptr[g], ptr[g + 1]):
                for i in range(starts[piece], stops[piece]):
                    v = values[i]
                    buf[j] = v
                    j += not np.isnan(v)
            a = buf
        if want_count:
            count[g] = m
        if m == 0:
            if want_median:
                median[g] = np.nan
            if want_mad:
                mad[g] = np.nan
            if want_spread:
                mean[g] = np.nan
                sd[g] = np.nan
            if want_max:
                maximum[g] = np.nan
            continue
        if want_max:
            top = a[0]
            for i in range(1, m):
                top = max(top, a[i])
            maximum[g] = top
        if want_spread:
            mu = _blocked_sum(a, m, np.nan) / m
            mean[g] = mu
            sd[g] = np.sqrt(_blocked_sum(a, m, mu) / m)
        if want_median or want_mad:
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
    """NaN-skipping statistics of the groups of every channel of ``columns``, in parallel over channels and groups.

    Parameters
    ----------
    columns
        ``(p, n)`` float64 values, channel-major (e.g. from :func:`gather_columns`); a channel is a row.
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
        Number of threads (default: ``os.cpu_count()``).

    Returns
    -------
    GroupStats
        ``(n_groups, p)`` arrays: ``count`` (int64 number of non-NaN values) and the float64 statistics asked for.
        Groups without non-NaN values in a channel get NaN there.
    """
    columns = np.ascontiguousarray(columns, dtype=np.float64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    stops = np.ascontiguousarray(stops, dtype=np.int64)
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    p = columns.shape[0]
    n_groups = len(ptr) - 1
    wanted = {"median": median, "mad": mad, "mean": spread, "sd": spread, "maximum": maximum}
    out = {key: np.empty((p, n_groups if want else 0)) for key, want in wanted.items()}
    count = np.empty((p, n_groups), dtype=np.int64)
    n_threads = thread_count(n_threads)
    piece_bounds = np.concatenate([[0], np.cumsum(stops - starts)])
    sizes = piece_bounds[ptr[1:]] - piece_bounds[ptr[:-1]]
    chunks = _group_chunks(sizes, -(-4 * n_threads // max(p, 1)) if n_threads > 1 else 1)

    def part(c, g0, g1):
        def run():
            row = {key: value[c, g0:g1] if wanted[key] else value[c] for key, value in out.items()}
            _stats_kernel(columns[c], starts, stops, ptr[g0 : g1 + 1], count[c, g0:g1], **row)

        return run

    _run([part(c, g0, g1) for c in range(p) for g0, g1 in zip(chunks[:-1], chunks[1:], strict=True)], n_threads)
    stats = {key: np.ascontiguousarray(value.T) if wanted[key] else None for key, value in out.items()}
    return GroupStats(count=np.ascontiguousarray(count.T), **stats)


@numba.njit(cache=True, nogil=True)
def _count_above_kernel(values, starts, stops, ptr, thresholds, out):
    """``out[g]``: number of values of group ``g`` above ``thresholds[g]`` (NaN never is). Assumes validated input."""
    for g in range(ptr.shape[0] - 1):
        t = thresholds[g]
        total = 0
        for piece in range(ptr[g], ptr[g + 1]):
            for i in range(starts[piece], stops[piece]):
                total += values[i] > t
        out[g] = total


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
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    out = np.empty(len(ptr) - 1, dtype=np.int64)
    _count_above_kernel(
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(starts, dtype=np.int64),
        np.ascontiguousarray(stops, dtype=np.int64),
        ptr,
        np.ascontiguousarray(thresholds, dtype=np.float64),
        out,
    )
    return out
