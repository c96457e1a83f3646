"""Self-organizing map kernels: FlowSOM's online SOM and a batch SOM.

Everything here is a pure function of arrays that assumes validated input (finite data with at least one row,
codes of matching width). The public entry point is :class:`pixelflowsom.PixelFlowSOM`, which validates.

The online SOM follows R FlowSOM's ``C_SOM`` (``FlowSOM/src/som.c``) step by step:

* ``rlen * n`` single-sample updates, the sample drawn uniformly with replacement;
* the winner is the node with the smallest Euclidean distance (lowest index on ties);
* the learning rate decays linearly from ``alpha[0]`` to ``alpha[1]`` over all updates;
* every node whose grid distance to the winner is at most the current radius moves towards the sample; the radius
  decays linearly from ``radius[0]`` to ``radius[1]`` and, once below 1, is held at 0.5 (only the winner moves);
* training stops early when a whole pass over ``n`` updates moved the codes by less than 1 in total (R's ``change``
  test; the Python ``flowsom`` port drops it because its loop cannot be left early).

The online SOM runs in float32, R's in float64: data, codes and learning rate are rounded to float32 and every
distance and update is float32 arithmetic (squared distances summed in channel order, each squared difference added
by a multiply-add, :func:`pixelflowsom._simd.muladd`), so that one update costs half the memory traffic and twice the
vector width; ``tests/test_som.py`` checks it bit for bit against a float32 numpy transcription of ``C_SOM``, and
against R's float64 arithmetic to 1e-5. The loops over nodes are written over sixteen-lane vectors
(:mod:`pixelflowsom._simd`): each best-matching-unit search keeps 112 nodes' sums in registers over all channels.

Results do not depend on the machine but in one respect: the multiply-add is fused (rounded once) where numba compiles
for a processor with a fused multiply-add instruction (x86-64 since Haswell and Zen, AArch64), and is a multiplication
and an addition, rounded twice, where it compiles for one without (``NUMBA_CPU_NAME=generic``, which shares compiled
caches between machines): the correctly rounded fused multiply-add would be emulated there, lane by lane, 13 times
slower. :func:`pixelflowsom._simd.fused` tells which one the kernels of the process use; the numpy reference of the
tests follows it. The two can give a squared distance that differs in its last bit, so a different best-matching unit
(and from there different codes) only where two nodes' distances to a sample agree to a float32 ulp: a near-tie as
below, as harmless.

Where float32 rounding can change a best-matching unit: only where two nodes' squared distances to a sample agree to
about 7 significant digits (a float32 ulp), e.g. codes that differ in their 7th or 8th digit, or data far from the
origin relative to their spread (1e4 +- 1e-3). Why that is harmless: such nodes are equally near to the precision of
float32 itself, and the update that follows moves the winner by ``alpha`` (>= 1%) of its distance to the sample, a
step millions of times larger than the distance difference; a different winner is one more draw of the random
sampling the algorithm already makes. The trained codes are returned as float64, and every label written afterwards
is the exact float64 nearest node of those codes (:mod:`pixelflowsom._nearest`). Data whose squared float32 distances
could overflow or underflow are scaled by a power of two for training, exactly (:func:`training_exponent`).

Values below the smallest normal float32 (``2**-126``, ``numpy.finfo(numpy.float32).tiny``) are flushed to ``+0.0``:
in the float32 training data and initial codes, and in every code the online SOM writes (:func:`_flush_subnormal`,
:func:`pixelflowsom._simd.flush_subnormal`). Why: speed on real tissue. Preprocessed tissue has many exact zeros, and
a code pulled towards 0 sample after sample decays geometrically (``c + (0 - c) * alpha``) into subnormal float32
values, with which many x86 processors compute many times more slowly (in microcode): there, training on tissue
can take far longer than on the same pixels plus 1. The flush changes results only where a code would otherwise be
subnormal, by less than ``2**-126`` in absolute value there (a winner that follows can change only where two nodes'
distances agree to that precision); on data without subnormal float32 values whose codes never become subnormal,
the trained codes are those computed without it, bit for bit (but for a ``-0.0``, which comes back ``+0.0``). The
numpy reference of the tests flushes the same way.

The batch SOM replaces single-sample updates by epochs: every epoch assigns all samples to their nearest node with
the GEMM-shaped kernel of :mod:`pixelflowsom._nearest`, then sets each code to the mean of the samples won by the
nodes in its grid neighbourhood (Kohonen's batch map with FlowSOM's bubble neighbourhood and radius schedule).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from scipy.spatial.distance import cdist, pdist, squareform

from . import _simd
from ._nearest import nearest_nodes_channel_first


def grid_coordinates(xdim: int, ydim: int) -> np.ndarray:
    """Grid position of every SOM node, in FlowSOM's node order.

    Node ``i`` sits at ``(i // ydim, i % ydim)``, exactly as ``flowsom`` enumerates
    ``[(x, y) for x in range(xdim) for y in range(ydim)]``.

    Parameters
    ----------
    xdim, ydim
        Size of the grid.

    Returns
    -------
    numpy.ndarray
        ``(xdim * ydim, 2)`` integer array of ``(x, y)`` grid positions.
    """
    x, y = np.meshgrid(np.arange(xdim), np.arange(ydim), indexing="ij")
    return np.column_stack([x.ravel(), y.ravel()])


def grid_distances(xdim: int, ydim: int) -> np.ndarray:
    """Chebyshev distances between all pairs of grid nodes, ``(n_nodes, n_nodes)`` float64."""
    return squareform(pdist(grid_coordinates(xdim, ydim).astype(np.float64), metric="chebyshev"))


def mst_distances(codes: np.ndarray) -> np.ndarray:
    """Hop distances between nodes along the minimum spanning tree of the codes (FlowSOM's ``DistMST``).

    Parameters
    ----------
    codes
        ``(n_nodes, n_features)`` node codes.

    Returns
    -------
    numpy.ndarray
        ``(n_nodes, n_nodes)`` float64 number of tree edges between every pair of nodes.
    """
    # csgraph reads 0 as "no edge", but identical codes must still be connected. Adding the same constant to every
    # edge changes no spanning tree's rank (all have n - 1 edges), so shift all weights above 0.
    dist = cdist(codes, codes) + 1.0
    np.fill_diagonal(dist, 0)
    tree = minimum_spanning_tree(dist)
    tree.data[:] = 1.0
    return shortest_path(tree, directed=False, unweighted=True)


def radius_alpha_schedule(
    nhbrdist: np.ndarray, alpha: tuple[float, float], mst: int
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """FlowSOM's per-phase ``(radius, alpha)`` start/end pairs.

    The radius starts at the 0.67 quantile of the grid distances and ends at 0; with ``mst > 1`` both schedules are
    split linearly into ``mst`` consecutive phases.

    Returns
    -------
    list of tuple
        One ``((radius_start, radius_end), (alpha_start, alpha_end))`` pair per phase.
    """
    r = np.linspace(np.quantile(nhbrdist, 0.67), 0.0, num=mst + 1)
    a = np.linspace(alpha[0], alpha[1], num=mst + 1)
    return [((float(r[i]), float(r[i + 1])), (float(a[i]), float(a[i + 1]))) for i in range(mst)]


#: Samples gathered at a time by the online SOM (1,024 x p float32 rows stay in L1/L2 cache).
_GATHER = 1024
#: The online SOM pads the node axis of its transposed codes to a multiple of 16 (one vector of
#: :mod:`pixelflowsom._simd`, a 64-byte row of float32), at least ``_GROUP`` long (its distances take the nodes seven
#: vectors at a time: 112 nodes, a 10 x 10 grid; smaller grids compute padding), and aligns every row to 64 bytes, so
#: that vectors of nodes start on cache lines; the argmin over the nodes' distances runs over a multiple of 64 (the
#: vectorised loop's block: no scalar remainder).
_NODE_PAD = _simd.LANES
_GROUP = 7 * _simd.LANES
_REDUCE_PAD = 64
_ALIGN = 64
#: The online SOM trains on data whose largest magnitude lies in ``[2**-_SCALE_LIMIT, 2**_SCALE_LIMIT]``: its
#: squared float32 distances can then neither overflow nor lose every digit to underflow. Other data are scaled by a
#: power of two for training (exact: it changes exponents only) and the codes scaled back.
_SCALE_LIMIT = 32


#: The smallest normal float32, ``2**-126``: the online SOM flushes smaller magnitudes to ``+0.0``.
_TINY = np.float32(_simd.TINY)


@numba.njit(cache=True, nogil=True)
def _flush_subnormal(value):
    """``value``, or ``+0.0`` when its magnitude is below ``_TINY`` (the scalar :func:`_simd.flush_subnormal`)."""
    return np.float32(0.0) if abs(value) < _TINY else value


@numba.njit(cache=True, nogil=True)
def _has_subnormal(values):
    """Whether the 1-d float32 ``values`` hold a subnormal number (non-zero, magnitude below ``_TINY``)."""
    found = False
    for i in range(values.shape[0]):
        v = values[i]
        found |= (v != 0) & (abs(v) < _TINY)
    return found


@numba.njit(cache=True, nogil=True)
def _flush_subnormals(values):
    """Flush the magnitudes below ``_TINY`` of the 1-d float32 ``values`` to ``+0.0``, in place."""
    for i in range(values.shape[0]):
        values[i] = _flush_subnormal(values[i])


@numba.njit(cache=True, nogil=True)
def _abs_diff_sum(samples, t, codes, lo, hi):
    """Sum of ``|sample t - code|`` over the nodes ``lo..hi-1``, in float64 (R's ``change`` contribution)."""
    total = 0.0
    for j in range(codes.shape[0]):
        xj = np.float64(samples[t, j])
        for cd in range(lo, hi):
            total += abs(xj - np.float64(codes[j, cd]))
    return total


@numba.njit(cache=True, nogil=True)
def _distances(samples, t, flat, kp, base, dist):
    """Squared distances of sample ``t`` to every (padded) node, in float32, into ``dist[:kp]``, 7 vectors at a time.

    ``flat`` is the ``(p, kp)`` node-minor codes, flattened; ``kp >= _GROUP`` is a multiple of ``_simd.LANES``. The
    nodes are taken ``_GROUP`` at a time (the last group overlaps the one before when ``kp`` is not a multiple of
    it: its nodes are computed twice, with the same result), each group as seven vectors of 16 nodes that stay in
    registers over the channels (seven independent sums hide the latency of each multiply-add): for AVX-512's 32
    registers (:func:`_simd.vector_bits` 512); :func:`_distances4` for narrower ones. Each node's sum is
    ``muladd(d_p, d_p, ... muladd(d_1, d_1, muladd(d_0, d_0, base)))`` in channel order, ``d_j = x_j - c_j`` rounded
    to float32 and each multiply-add rounded once where it is fused (:func:`_simd.fused`), twice where it is not: the
    numpy reference computes the same bits. Each sum starts at ``base`` (0 for the nodes, ``inf`` for padding).
    """
    p = samples.shape[1]
    lanes = _simd.LANES
    group = 0
    while group < kp:
        b = min(group, kp - _GROUP)
        a0 = _simd.load(base, b + 0 * lanes)
        a1 = _simd.load(base, b + 1 * lanes)
        a2 = _simd.load(base, b + 2 * lanes)
        a3 = _simd.load(base, b + 3 * lanes)
        a4 = _simd.load(base, b + 4 * lanes)
        a5 = _simd.load(base, b + 5 * lanes)
        a6 = _simd.load(base, b + 6 * lanes)
        for j in range(p):
            x = _simd.splat(samples[t, j])
            row = j * kp + b
            d0 = _simd.sub(x, _simd.load(flat, row + 0 * lanes))
            d1 = _simd.sub(x, _simd.load(flat, row + 1 * lanes))
            d2 = _simd.sub(x, _simd.load(flat, row + 2 * lanes))
            d3 = _simd.sub(x, _simd.load(flat, row + 3 * lanes))
            d4 = _simd.sub(x, _simd.load(flat, row + 4 * lanes))
            d5 = _simd.sub(x, _simd.load(flat, row + 5 * lanes))
            d6 = _simd.sub(x, _simd.load(flat, row + 6 * lanes))
            a0 = _simd.muladd(d0, d0, a0)
            a1 = _simd.muladd(d1, d1, a1)
            a2 = _simd.muladd(d2, d2, a2)
            a3 = _simd.muladd(d3, d3, a3)
            a4 = _simd.muladd(d4, d4, a4)
            a5 = _simd.muladd(d5, d5, a5)
            a6 = _simd.muladd(d6, d6, a6)
        _simd.store(dist, b + 0 * lanes, a0)
        _simd.store(dist, b + 1 * lanes, a1)
        _simd.store(dist, b + 2 * lanes, a2)
        _simd.store(dist, b + 3 * lanes, a3)
        _simd.store(dist, b + 4 * lanes, a4)
        _simd.store(dist, b + 5 * lanes, a5)
        _simd.store(dist, b + 6 * lanes, a6)
        group += _GROUP


@numba.njit(cache=True, nogil=True)
def _distances4(samples, t, flat, kp, base, dist):
    """:func:`_distances` four vectors (64 nodes) at a time: the same sums, for targets with 16 vector registers.

    Seven vectors of 16 float32 need 14 AVX or 28 SSE registers for the sums alone, and the machine has 16: the sums
    would be stored and reloaded in every step. Four take 8 AVX registers (measured on this package's benchmark
    machine, 400k x 20 pixels compiled for Haswell: the distances and argmin 0.076 s per million samples against
    0.120 s with seven). ``kp >= _GROUP >= 64``; the last group overlaps the one before as in :func:`_distances`.
    """
    p = samples.shape[1]
    lanes = _simd.LANES
    width = 4 * lanes
    group = 0
    while group < kp:
        b = min(group, kp - width)
        a0 = _simd.load(base, b + 0 * lanes)
        a1 = _simd.load(base, b + 1 * lanes)
        a2 = _simd.load(base, b + 2 * lanes)
        a3 = _simd.load(base, b + 3 * lanes)
        for j in range(p):
            x = _simd.splat(samples[t, j])
            row = j * kp + b
            d0 = _simd.sub(x, _simd.load(flat, row + 0 * lanes))
            d1 = _simd.sub(x, _simd.load(flat, row + 1 * lanes))
            d2 = _simd.sub(x, _simd.load(flat, row + 2 * lanes))
            d3 = _simd.sub(x, _simd.load(flat, row + 3 * lanes))
            a0 = _simd.muladd(d0, d0, a0)
            a1 = _simd.muladd(d1, d1, a1)
            a2 = _simd.muladd(d2, d2, a2)
            a3 = _simd.muladd(d3, d3, a3)
        _simd.store(dist, b + 0 * lanes, a0)
        _simd.store(dist, b + 1 * lanes, a1)
        _simd.store(dist, b + 2 * lanes, a2)
        _simd.store(dist, b + 3 * lanes, a3)
        group += width


@numba.njit(cache=True, nogil=True)
def _argmin(bits):
    """Index of the smallest of the non-negative float32 values whose int32 bits are ``bits``, the lowest on ties.

    Non-negative floats order as their bits, so ``bits << 32 | index`` orders as (value, index): one vectorised
    integer reduction finds both. For targets with 64-bit integer vector comparisons (SSE 4.2, AVX); without them
    (SSE2), :func:`_argmin32`.
    """
    best = np.int64(0x7FFFFFFFFFFFFFFF)
    for cd in range(bits.shape[0]):
        best = min(best, (np.int64(bits[cd]) << 32) | np.int64(cd))
    return best & 0xFFFFFFFF


@numba.njit(cache=True, nogil=True)
def _argmin32(bits):
    """:func:`_argmin` as a 32-bit minimum, then the first index holding it: for targets without 64-bit comparisons.

    SSE2 compares 32-bit integers in vectors, not 64-bit ones, which LLVM would emulate lane by lane.
    """
    best = bits[0]
    for cd in range(bits.shape[0]):
        best = min(best, bits[cd])
    for cd in range(bits.shape[0]):
        if bits[cd] == best:
            return cd
    return 0


@numba.njit(cache=True, nogil=True)
def _gather(data, order, start, samples):
    """Copy the rows ``order[start:start + len(samples)]`` of ``data`` into ``samples``.

    A first loop copies only the first and last value of every row: its loads are independent, so the core has many
    cache misses in flight at once, and the full copy then reads from cache instead of waiting on one random row at
    a time.
    """
    p = data.shape[1]
    m = min(samples.shape[0], order.shape[0] - start)
    for r in range(m):
        row = order[start + r]
        samples[r, 0] = data[row, 0]
        samples[r, p - 1] = data[row, p - 1]
    for r in range(m):
        row = order[start + r]
        for j in range(p):
            samples[r, j] = data[row, j]


@numba.njit(cache=True, nogil=True)
def _update_run(samples, t, flat, kp, column_f, node_f, first, last, y0, y1, alpha):
    """Move the nodes ``first..last-1`` whose grid column lies in ``y0..y1-1`` towards sample ``t``, in place.

    Each moves by ``c + (x - c) * alpha``, every operation rounded to float32, and a result below the smallest
    normal float32 is flushed to ``+0.0`` (:func:`_simd.flush_subnormal`). The update runs over whole vectors of 16
    nodes, from the one holding ``first`` to the one holding ``last - 1``, each over all channels while its weights
    stay in a register, two vectors at a time while two remain (two independent chains of subtraction,
    multiplication, addition and flush per channel: the flush's latency overlaps); the other nodes in them get the
    weight 0 (their values are rewritten unchanged: ``c + (x - c) * 0`` is ``c`` when ``x - c`` is finite, and the
    codes hold neither subnormals nor ``-0.0``, which the flush would change). ``column_f`` and ``node_f`` are every
    node's grid column and index as float32; ``flat`` is the ``(p, kp)`` codes, flattened.
    """
    lanes = _simd.LANES
    w_alpha = _simd.splat(alpha)
    y0_f, y1_f = np.float32(y0), np.float32(y1)
    first_f, last_f = np.float32(first), np.float32(last)
    b = first - first % _NODE_PAD
    while b + lanes < last:  # so b + 2 * lanes <= kp
        w0 = _simd.where_within(_simd.load(column_f, b), y0_f, y1_f, w_alpha)
        w0 = _simd.where_within(_simd.load(node_f, b), first_f, last_f, w0)
        w1 = _simd.where_within(_simd.load(column_f, b + lanes), y0_f, y1_f, w_alpha)
        w1 = _simd.where_within(_simd.load(node_f, b + lanes), first_f, last_f, w1)
        for j in range(samples.shape[1]):
            x = _simd.splat(samples[t, j])
            row = j * kp + b
            c0 = _simd.load(flat, row)
            c1 = _simd.load(flat, row + lanes)
            moved0 = _simd.add(c0, _simd.mul(_simd.sub(x, c0), w0))
            moved1 = _simd.add(c1, _simd.mul(_simd.sub(x, c1), w1))
            _simd.store(flat, row, _simd.flush_subnormal(moved0))
            _simd.store(flat, row + lanes, _simd.flush_subnormal(moved1))
        b += 2 * lanes
    while b < last:  # runs once or not at all (a ``while``: the kernel measured faster than with an ``if``)
        w = _simd.where_within(_simd.load(column_f, b), y0_f, y1_f, w_alpha)
        w = _simd.where_within(_simd.load(node_f, b), first_f, last_f, w)
        for j in range(samples.shape[1]):
            c = _simd.load(flat, j * kp + b)
            moved = _simd.add(c, _simd.mul(_simd.sub(_simd.splat(samples[t, j]), c), w))
            _simd.store(flat, j * kp + b, _simd.flush_subnormal(moved))
        b += lanes


@numba.njit(cache=True, nogil=True)
def online_som_pass(
    data,
    order,
    codes,
    base,
    ydim,
    neighbours,
    neighbour_dist,
    threshold,
    k0,
    niter,
    alphas,
    radii,
    change_limit,
    vector_bits=512,
):
    """Run one pass of FlowSOM's online SOM (R's ``C_SOM``) in float32, in place.

    Checks the shapes of its arrays against each other first (its vector loads read without bounds checks), and
    otherwise assumes validated input. Each update:

    1. *Best-matching unit*: :func:`_distances`, then :func:`_argmin` (the lowest index on ties); the same sums and
       index with :func:`_distances4` and :func:`_argmin32`, whose loops fit narrower machines (``vector_bits``).
    2. *Update*: every node within the current radius moves towards the sample, ``c + (x - c) * alpha``, each
       operation rounded to float32 (``alpha`` is R's float64 learning rate rounded to float32), a result below the
       smallest normal float32 flushed to ``+0.0`` (:func:`_flush_subnormal`). On a grid
       (``ydim > 0``) the Chebyshev ball is a window of rows ``x0..x1`` and columns ``y0..y1``; the rows' nodes are
       consecutive, so they are updated as one run of vectors (:func:`_update_run`), the nodes outside the window
       with the weight 0 instead of ``alpha`` (rewritten unchanged when ``x - c`` is finite, which learning rates in
       ``[0, 1]`` guarantee: the codes then stay within the range of the initial codes and the data, at most
       ``2**_SCALE_LIMIT`` in magnitude, see :func:`training_exponent`). With other learning rates, or on grids much
       wider than the window (more than 64 columns), the window is updated row by row. With any other
       neighbourhood (``ydim == 0``), a winner that moves alone is updated as one vector, other neighbourhoods node
       by node.

    Parameters
    ----------
    data
        ``(n, p)`` float32 training data, C-contiguous, without subnormal numbers (else slow, see the module).
    order
        Row indices of the samples presented in this pass, in order.
    codes
        ``(p, kp)`` float32 codes, node-minor, C-contiguous, ``kp >= max(n_nodes, _GROUP)`` a multiple of 16;
        padding nodes are 0 and never selected; no subnormal numbers and no ``-0.0`` (the nodes an update rewrites
        unchanged would come back flushed). Updated in place.
    base
        ``(kp,)`` float32: 0 for the ``n_nodes`` nodes, ``inf`` for padding.
    ydim
        When positive, the neighbourhood distance is the Chebyshev distance on a ``(n_nodes // ydim) x ydim`` grid
        (:func:`grid_distances`). Zero for any other neighbourhood (the minimum spanning tree of later ``mst``
        phases), given by ``neighbours``.
    neighbours, neighbour_dist
        ``(n_nodes, n_nodes)``: row ``w`` lists all nodes by increasing neighbourhood distance to node ``w``, and
        those distances (only read when ``ydim == 0``).
    threshold
        The neighbourhood radius at the start of the pass: carried from pass to pass, decremented one step per
        update exactly as R does (recomputing it would round differently right where nodes enter or leave the
        neighbourhood).
    k0
        Number of updates done before this pass (the schedules are functions of the global update count).
    niter
        Total number of updates of the phase, ``rlen * n``.
    alphas, radii
        Start and end of the learning-rate and radius schedules of the phase.
    change_limit
        Summing R's ``change`` stops once it reaches this value (the early-stopping test only needs to know whether
        it does; the terms are non-negative).
    vector_bits
        :func:`_simd.vector_bits` of the target the kernel is compiled for: 512 takes the distances seven vectors at a
        time, fewer bits four; 128 also finds the nearest node with 32-bit integers. The results are the same.

    Returns
    -------
    change : float
        The total absolute change of the codes during the pass (R FlowSOM's ``change``), summed until it reaches
        ``change_limit``.
    threshold : float
        The radius at the end of the pass.
    """
    p, kp = codes.shape
    n_nodes = neighbours.shape[0]
    # The vector loads and the gather read without bounds checks: check every shape they rely on first.
    if (
        kp % _simd.LANES
        or not _GROUP <= kp <= 2**24
        or base.shape[0] != kp
        or data.shape[1] != p
        or not 0 < n_nodes <= kp
    ):
        raise ValueError("online_som_pass: codes, base, data and neighbours do not match")
    if (
        ydim > 0
        and n_nodes % ydim
        or ydim == 0
        and (neighbours.shape[1] != n_nodes or neighbour_dist.shape != neighbours.shape)
    ):
        raise ValueError("online_som_pass: the neighbourhood does not match the nodes")
    if order.shape[0] and (order.min() < 0 or order.max() >= data.shape[0]):
        raise ValueError("online_som_pass: order indexes rows outside data")
    flat = codes.reshape(-1)
    flat_data = data.reshape(-1)
    step = (radii[0] - radii[1]) / niter
    xdim = n_nodes // ydim if ydim > 0 else 0
    change = 0.0
    samples = np.empty((_GATHER, p), np.float32)
    kr = -(-kp // _REDUCE_PAD) * _REDUCE_PAD
    dist = np.full(kr, np.inf, np.float32)  # entries kp.. stay inf
    bits = dist.view(np.int32)
    # Grid row and column of every node, and as float32 (exact) for the vectors of window weights, with the node
    # index; padding nodes get a column no window contains.
    row_of = np.zeros(kp, np.int64)
    column = np.full(kp, -1, np.int64)
    if ydim > 0:
        for cd in range(n_nodes):
            row_of[cd] = cd // ydim
            column[cd] = cd % ydim
    column_f = column.astype(np.float32)
    node_f = np.arange(kp).astype(np.float32)
    convex = 0.0 <= min(alphas[0], alphas[1]) and max(alphas[0], alphas[1]) <= 1.0
    one = np.uint64(1)
    for t_all in range(order.shape[0]):
        t = t_all % _GATHER
        if t == 0:
            _gather(data, order, t_all, samples)
        ahead = t_all + _GATHER
        if ahead < order.shape[0]:
            _simd.prefetch(flat_data, order[ahead] * p)
            _simd.prefetch(flat_data, order[ahead] * p + p - 1)
        # 1. Best-matching unit.
        if vector_bits >= 512:
            _distances(samples, t, flat, kp, base, dist)
        else:
            _distances4(samples, t, flat, kp, base, dist)
        nearest = _argmin(bits) if vector_bits > 128 else _argmin32(bits)
        # 2. Update the neighbourhood.
        if threshold < 1.0:
            threshold = 0.5
        alpha = np.float32(alphas[0] - (alphas[0] - alphas[1]) * (k0 + t_all) / niter)
        if ydim > 0:
            r = int(np.floor(threshold))
            wx = row_of[nearest]
            wy = column[nearest]
            y0 = max(0, wy - r)
            y1 = min(ydim - 1, wy + r) + 1
            x0 = max(0, wx - r)
            x1 = min(xdim - 1, wx + r) + 1
            if change < change_limit:
                for q in range(x0, x1):
                    change += _abs_diff_sum(samples, t, codes, q * ydim + y0, q * ydim + y1)
            if convex and (r == 0 or ydim <= 64 + 2 * (y1 - y0)):
                # Rows x0..x1 as one run of nodes; nodes in it outside the window get the weight 0.
                first = x0 * ydim + y0
                _update_run(samples, t, flat, kp, column_f, node_f, first, (x1 - 1) * ydim + y1, y0, y1, alpha)
            else:
                # One loop per row of the window.
                for q in range(x0, x1):
                    lo = np.uint64(q * ydim + y0)
                    hi = np.uint64(q * ydim + y1)
                    for j in range(p):
                        xj = samples[t, j]
                        cd = lo
                        while cd < hi:
                            c = codes[j, cd]
                            codes[j, cd] = _flush_subnormal(c + (xj - c) * alpha)
                            cd += one
        elif (
            convex
            and neighbours[nearest, 0] == nearest
            and neighbour_dist[nearest, 0] <= threshold
            and (n_nodes == 1 or neighbour_dist[nearest, 1] > threshold)
        ):
            # Only the winner moves.
            if change < change_limit:
                change += _abs_diff_sum(samples, t, codes, nearest, nearest + 1)
            _update_run(samples, t, flat, kp, column_f, node_f, nearest, nearest + 1, -np.inf, np.inf, alpha)
        else:
            for k in range(n_nodes):
                if neighbour_dist[nearest, k] > threshold:
                    break
                cd = neighbours[nearest, k]
                if change < change_limit:
                    change += _abs_diff_sum(samples, t, codes, cd, cd + 1)
                for j in range(p):
                    c = codes[j, cd]
                    codes[j, cd] = _flush_subnormal(c + (samples[t, j] - c) * alpha)
        threshold -= step
    return change, threshold


def _aligned_zeros(shape, dtype):
    """Zeros of ``shape`` whose data start on a ``_ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buffer = np.zeros(n + _ALIGN, np.uint8)
    offset = -buffer.ctypes.data % _ALIGN
    return buffer[offset : offset + n].view(dtype).reshape(shape)


def training_exponent(data, codes):
    """Power of two ``e`` by which :func:`online_som` scales ``data`` and ``codes`` for training (usually 0).

    Zero when the largest magnitude of both lies in ``[2**-_SCALE_LIMIT, 2**_SCALE_LIMIT]`` (or is 0); otherwise the
    ``e`` that brings it into ``[0.5, 1)``. Scaling by a power of two is exact, and every step of the online SOM
    commutes with it (except where float32 would overflow or underflow, which the scaling avoids).
    """
    # max and -min: no temporary of the data's size (np.abs would make one)
    largest = max(float(np.max(data)), -float(np.min(data)), float(np.max(codes)), -float(np.min(codes)))
    if largest == 0.0 or 2.0**-_SCALE_LIMIT <= largest <= 2.0**_SCALE_LIMIT:
        return 0
    return -int(np.frexp(largest)[1])


def online_som(data, codes, nhbrdist, rlen, alphas, radii, random_state, ydim=0):
    """Train codes with FlowSOM's online SOM for one phase (``rlen`` passes), in float32.

    Parameters
    ----------
    data
        ``(n, p)`` training data, finite, any float dtype and layout (read from a C-contiguous float32 copy, made
        only when ``data`` is not one already or holds subnormal float32 numbers, which the copy flushes to 0).
    codes
        ``(n_nodes, p)`` initial codes; not modified.
    nhbrdist
        ``(n_nodes, n_nodes)`` neighbourhood distances.
    rlen
        Number of passes over the data.
    alphas, radii
        Start and end of the learning-rate and radius schedules.
    random_state
        A :class:`numpy.random.RandomState` drawing the presented samples.
    ydim
        ``ydim`` of the grid when ``nhbrdist`` is the grid's Chebyshev distance (:func:`grid_distances`), else 0.

    Returns
    -------
    codes : numpy.ndarray
        The trained codes, float64 (float32 values).
    n_iter : int
        The number of passes run (fewer than ``rlen`` when the codes stopped changing).
    """
    data = np.asarray(data)
    codes = np.asarray(codes, dtype=np.float64)
    nhbrdist = np.asarray(nhbrdist, dtype=np.float64)
    n_nodes, p = codes.shape
    exponent = training_exponent(data, codes)
    if exponent:
        data = np.ldexp(np.asarray(data, dtype=np.float64), exponent)
        codes = np.ldexp(codes, exponent)
    # Samples are read in random order, a cache miss each: from C-contiguous float32 rows (the sample of an image fit
    # is one already, and is read in place; a copy otherwise).
    source = np.ascontiguousarray(data, dtype=np.float32)
    # No subnormal numbers in the data nor the codes (see the module docstring); the caller's data stay untouched.
    if _has_subnormal(source.reshape(-1)):
        if np.may_share_memory(source, data):
            source = source.copy()
        _flush_subnormals(source.reshape(-1))
    kp = max(_GROUP, -(-n_nodes // _NODE_PAD) * _NODE_PAD)
    codes_t = _aligned_zeros((p, kp), np.float32)
    codes_t[:, :n_nodes] = codes.T
    _flush_subnormals(codes_t.reshape(-1))
    base = np.zeros(kp, np.float32)
    base[n_nodes:] = np.inf
    if ydim > 0:
        neighbours = np.zeros((n_nodes, 0), np.int64)
        neighbour_dist = np.zeros((n_nodes, 0))
    else:
        # Stable: nodes at the same distance stay in index order (the order only matters to R's change sum).
        neighbours = np.argsort(nhbrdist, axis=1, kind="stable")
        neighbour_dist = np.ascontiguousarray(np.take_along_axis(nhbrdist, neighbours, axis=1))
    n = source.shape[0]
    niter = rlen * n
    alphas = (float(alphas[0]), float(alphas[1]))
    radii = (float(radii[0]), float(radii[1]))
    change_limit = float(np.ldexp(1.0, exponent))  # R's test `change < 1` on the unscaled data
    n_iter = rlen
    threshold = radii[0]
    # The samples of the next pass are drawn by a thread of their own while the kernel runs (it holds no GIL): 10M
    # indices take about 0.13 s per pass. If training stops early, the random state is set back to where the
    # sequential draws would have left it.
    with ThreadPoolExecutor(1) as pool:
        order = random_state.randint(0, n, size=n)
        for it in range(rlen):
            state = random_state.get_state()
            upcoming = pool.submit(random_state.randint, 0, n, size=n) if it + 1 < rlen else None
            change, threshold = online_som_pass(
                source,
                order,
                codes_t,
                base,
                int(ydim),
                neighbours,
                neighbour_dist,
                threshold,
                it * n,
                niter,
                alphas,
                radii,
                change_limit,
                _simd.vector_bits(),
            )
            order = upcoming.result() if upcoming is not None else None
            if change < change_limit:
                n_iter = it + 1
                random_state.set_state(state)
                break
    trained = codes_t[:, :n_nodes].T.astype(np.float64)
    return np.ascontiguousarray(np.ldexp(trained, -exponent) if exponent else trained), n_iter


def batch_som(data, codes, nhbrdist, rlen, radii, n_threads=None):
    """Train codes with a batch SOM for one phase (``rlen`` epochs).

    Each epoch assigns every sample to its nearest node, then moves each code to the mean of the samples won by the
    nodes within the current radius of it on the grid (a code whose neighbourhood won nothing keeps its value). The
    radius follows the online SOM's schedule, one value per epoch, held at 0.5 once below 1, so the last epochs are
    k-means (Lloyd) steps.

    Parameters
    ----------
    data
        ``(n, p)`` float64 training data, finite.
    codes
        ``(n_nodes, p)`` float64 initial codes; not modified.
    nhbrdist
        ``(n_nodes, n_nodes)`` neighbourhood distances.
    rlen
        Number of epochs.
    radii
        Start and end of the radius schedule.
    n_threads
        Threads for the nearest-node search (``None``: all cores).

    Returns
    -------
    codes : numpy.ndarray
        The trained codes.
    n_iter : int
        The number of epochs run (fewer than ``rlen`` when an epoch left the codes unchanged).
    """
    codes = np.array(codes, dtype=np.float64, order="C")
    # Read once per epoch by the assignment: channel-first (unit-stride tile copies) and float32 (half the bytes).
    data32_t = np.ascontiguousarray(np.asarray(data).T, dtype=np.float32)
    for epoch in range(rlen):
        radius = radii[0] - (radii[0] - radii[1]) * epoch / rlen
        if radius < 1.0:
            radius = 0.5
        _, sums, counts = nearest_nodes_channel_first(
            data32_t, codes, n_threads=n_threads, exact=False, return_sums=True
        )
        hood = (nhbrdist <= radius).astype(np.float64)
        weight = hood @ counts
        won = weight > 0
        new = codes.copy()
        new[won] = (hood @ sums)[won] / weight[won, None]
        if np.array_equal(new, codes):
            return new, epoch + 1
        codes = new
    return codes, rlen


#: Online passes that finish the hybrid SOM (see :func:`train_som`): on the real images of benchmarks/bench_real.py,
#: 3 gave a lower quantization error than the online SOM on both images, 2 on both, 1 on neither.
HYBRID_PASSES = 3


def train_som(sample, xdim, ydim, *, rlen, mst, alpha, som, random_state):
    """Train a ``xdim`` x ``ydim`` SOM on ``sample``: FlowSOM's initialisation, then ``mst`` phases.

    Parameters
    ----------
    sample
        ``(n, p)`` finite float64 training data.
    xdim, ydim
        Grid size.
    rlen, mst, alpha
        FlowSOM's passes per phase, number of phases and learning-rate schedule.
    som
        ``"online"`` (:func:`online_som`), ``"batch"`` (:func:`batch_som`) or ``"hybrid"``: the batch SOM, then
        ``HYBRID_PASSES`` passes of the online SOM in its final regime, where only the winner moves (radius below 1),
        with the learning rate decaying from ``2 * alpha[1]`` to ``alpha[1]``. The online SOM spends the end of its
        schedule in that regime (the last ``1 / radius[0]`` of its updates, ``alpha`` near ``alpha[1]``); the batch
        SOM replaces the neighbourhood phase before it, where most of the online SOM's time goes (every update moves
        a large window of nodes).
    random_state
        A :class:`numpy.random.RandomState` (initial codes, then the online updates).

    Returns
    -------
    codes : numpy.ndarray
        ``(xdim * ydim, p)`` trained codes.
    n_iter : int
        Passes (online) or epochs (batch) run, summed over the phases (and the hybrid's final passes).

    Notes
    -----
    The initial codes are ``xdim * ydim`` distinct rows of ``sample``; with fewer rows than nodes they are drawn
    with replacement (R FlowSOM would fail).
    """
    n_nodes = xdim * ydim
    codes = sample[random_state.choice(sample.shape[0], size=n_nodes, replace=sample.shape[0] < n_nodes)]
    nhbrdist = grid_distances(xdim, ydim)
    n_iter = 0
    for phase, (radii, alphas) in enumerate(radius_alpha_schedule(nhbrdist, alpha, mst)):
        if phase > 0:
            nhbrdist = mst_distances(codes)
        if som == "online":
            ydim_arg = ydim if phase == 0 else 0
            codes, it = online_som(sample, codes, nhbrdist, rlen, alphas, radii, random_state, ydim=ydim_arg)
        else:
            codes, it = batch_som(sample, codes, nhbrdist, rlen, radii)
        n_iter += it
    if som == "hybrid":
        # Radius 0.5: only the winner moves, whatever the neighbourhood distances.
        winner_only = (0.5, 0.0)
        codes, it = online_som(
            sample, codes, nhbrdist, HYBRID_PASSES, (2 * alpha[1], alpha[1]), winner_only, random_state, ydim=0
        )
        n_iter += it
    return codes, n_iter
