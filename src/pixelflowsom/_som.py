"""Self-organizing map kernels: FlowSOM's online SOM and a batch SOM.

Everything here is a pure function of arrays that assumes validated input (finite ``float64`` data with at least
one row, codes of matching width). The public entry point is :class:`pixelflowsom.PixelFlowSOM`, which validates.

The online SOM follows R FlowSOM's ``C_SOM`` (``FlowSOM/src/som.c``) step by step:

* ``rlen * n`` single-sample updates, the sample drawn uniformly with replacement;
* the winner is the node with the smallest Euclidean distance (lowest index on ties);
* the learning rate decays linearly from ``alpha[0]`` to ``alpha[1]`` over all updates;
* every node whose grid distance to the winner is at most the current radius moves towards the sample; the radius
  decays linearly from ``radius[0]`` to ``radius[1]`` and, once below 1, is held at 0.5 (only the winner moves);
* training stops early when a whole pass over ``n`` updates moved the codes by less than 1 in total (R's ``change``
  test; the Python ``flowsom`` port drops it because its loop cannot be left early).

The codes are float64 and every update is R's float64 arithmetic, ``c + (x - c) * alpha``; the winner is the
float64 argmin of the squared distances summed in channel order (R's loop; numpy sums 8 or more values pairwise,
which can order two nodes differently only when their distances agree to the last bit or so). The search for it
runs in float32 on a float32 copy of the codes, at twice the vector width: float32 rounding *could* make the wrong
node look nearest (codes that differ in the 7th or 8th digit, or identical codes, which the SOM makes common by
pulling neighbours together), so every node within a rigorous bound of the float32 minimum is a candidate, and when
there are several, their float64 distances decide. The result is the float64 argmin over all nodes, lowest index on
ties, whatever the rounding (:func:`online_som_pass`).

The batch SOM replaces single-sample updates by epochs: every epoch assigns all samples to their nearest node with
the GEMM-shaped kernel of :mod:`pixelflowsom._nearest`, then sets each code to the mean of the samples won by the
nodes in its grid neighbourhood (Kohonen's batch map with FlowSOM's bubble neighbourhood and radius schedule).
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree, shortest_path
from scipy.spatial.distance import cdist, pdist, squareform

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


#: Samples gathered at a time by the online SOM (1,024 x p float64 and float32 rows stay in L2 cache).
_GATHER = 1024
#: The online SOM pads the node axis of its transposed codes to a multiple of 16 (a 64-byte row of float32) and
#: aligns every row to 64 bytes, so that the vectorised loops over nodes start on cache lines.
_NODE_PAD = 16
_ALIGN = 64
#: Unit roundoffs of float32 and float64.
_U32 = 2.0**-24
_U64 = 2.0**-53
#: Above this norm the float32 search could overflow: the online SOM then searches in float64 only.
_MAX_SCALE32 = 2.0**60


@numba.njit(cache=True, nogil=True)
def _abs_diff_sum(samples, t, codes_t, lo, hi):
    """Sum of ``|sample t - code|`` over the nodes ``lo..hi-1`` (R's ``change`` contribution of an update)."""
    total = 0.0
    for j in range(codes_t.shape[0]):
        xj = samples[t, j]
        for cd in range(lo, hi):
            total += abs(xj - codes_t[j, cd])
    return total


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _distances32(samples32, t, codes32, dist, base):
    """Squared distances of sample ``t`` to every (padded) node in float32, into ``dist``; the bits of the smallest.

    ``codes32`` is ``(p, kp)``, node-minor: the loop over nodes is the vectorised one, four channels per sweep so
    that each distance is loaded and stored once per four channels. Each node's sum runs over the channels in order
    (fused multiply-adds allowed: the error bound of :func:`online_som_pass` holds either way). ``base`` is 0 for
    real nodes and ``inf`` for padding. The minimum is taken on the int32 bits, which order non-negative floats as
    the floats themselves and make a vectorised reduction.
    """
    p, kp = codes32.shape
    p4 = p - p % 4
    for cd in range(kp):
        dist[cd] = base[cd]
    for j in range(0, p4, 4):
        x0 = samples32[t, j]
        x1 = samples32[t, j + 1]
        x2 = samples32[t, j + 2]
        x3 = samples32[t, j + 3]
        for cd in range(kp):
            d0 = x0 - codes32[j, cd]
            d1 = x1 - codes32[j + 1, cd]
            d2 = x2 - codes32[j + 2, cd]
            d3 = x3 - codes32[j + 3, cd]
            dist[cd] = dist[cd] + d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
    for j in range(p4, p):
        xj = samples32[t, j]
        for cd in range(kp):
            d = xj - codes32[j, cd]
            dist[cd] = dist[cd] + d * d
    bits = dist.view(np.int32)
    best = bits[0]
    for cd in range(kp):
        best = min(best, bits[cd])
    return best


@numba.njit(cache=True, nogil=True)
def _gather(data, order, start, samples, samples32):
    """Copy the rows ``order[start:start + len(samples)]`` of ``data`` into ``samples`` (float64) and ``samples32``.

    A first loop copies only the first and last value of every row: its loads are independent, so the core has many
    cache misses in flight at once, and the full copy then reads from cache instead of waiting on one random row at
    a time. ``data`` may be float32 (see :func:`online_som`): its values convert to float64 exactly.
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
            v = np.float64(data[row, j])
            samples[r, j] = v
            samples32[r, j] = v


@numba.njit(cache=True, nogil=True)
def _bound_constants(p, scale):
    """Constants of the float32 error bound of :func:`online_som_pass` (see its Notes) for ``p`` channels."""
    gp = p * _U32 / (1.0 - p * _U32)
    g64 = (p + 2) * _U64 / (1.0 - (p + 2) * _U64)
    tiny = p * 2.0**-148  # underflow
    su = _U32 * (1.0 + _U32) * (scale + np.sqrt(p) * 2.0**-125)
    # The divisions of the bound as multiplications by constants rounded up: the bound only needs to stay an upper
    # bound.
    inv_gp = (1.0 + 4.0 * _U64) / (1.0 - gp)
    rho_factor = (1.0 + 4.0 * _U64) * (1.0 + 2.0 * g64) / (1.0 - _U32)
    return gp, g64, tiny, su, inv_gp, rho_factor


@numba.njit(cache=True, nogil=True)
def _candidate_limit(m, constants):
    """Return the float32 distance above which no node can be the float64 winner, given the float32 minimum ``m``.

    ``m + 4 E(rho (1 + 2 g64))`` of :func:`online_som_pass`'s Notes (twice the margin the proof needs), rounded up
    to float32.
    """
    gp, g64, tiny, su, inv_gp, rho_factor = constants
    rho = (np.sqrt((m + tiny) * inv_gp) + su) * rho_factor
    a = su + _U32 * rho
    err = gp * (rho + a) ** 2 + 2.0 * a * rho + a * a + g64 * rho * rho + tiny
    return np.float32((m + 4.0 * err) * (1.0 + 2.0**-22) + 2.0**-149)


@numba.njit(cache=True, nogil=True)
def online_som_pass(
    data, order, codes_t, codes32, base, ydim, neighbours, neighbour_dist, threshold, k0, niter, alphas, radii, scale
):
    """Run one pass of FlowSOM's online SOM (R's ``C_SOM``), in place. Assumes validated input.

    The codes live twice, node-minor (one row per channel, so that loops over nodes vectorise): ``codes_t`` in
    float64, the codes themselves, and ``codes32``, their float32 rounding, updated together with them. Each update:

    1. *Best-matching unit.* :func:`_distances32` computes the squared distances to all nodes in float32 from
       ``codes32`` (half the memory traffic of float64, twice the vector width). Float32 rounding could make a node
       look nearest that is not (near-ties: codes that differ in the 7th or 8th digit, or identical codes, which the
       SOM makes common by pulling neighbours together); so every node whose float32 distance is within a rigorous
       bound of the float32 minimum is a candidate, and if there is more than one, their distances are recomputed in
       float64 exactly as R's C code does (differences squared and summed in channel order) and the smallest wins,
       the lowest index on ties. The bound makes that choice the float64 argmin over *all* nodes: no float32
       rounding can change a best-matching unit.
    2. *Update.* Every node within the current radius moves towards the sample, ``c + (x - c) * alpha`` in float64
       (R's operations, no fused multiply-add), and its float32 copy is refreshed. On a grid (``ydim > 0``) the
       Chebyshev ball is a window of rows ``x0..x1`` and columns ``y0..y1``; the rows' nodes are consecutive, so
       each channel is updated with one vectorised loop over them, the nodes outside the window with the weight 0
       instead of ``alpha`` (their values are rewritten unchanged). Only on grids much wider than the window (more
       than 64 columns) is the window updated row by row.

    Parameters
    ----------
    data
        ``(n, p)`` training data, C-contiguous: float64, or float32 when that holds the data exactly.
    order
        Row indices of the samples presented in this pass, in order.
    codes_t, codes32
        ``(p, kp)`` float64 codes and their float32 rounding, node-minor, ``kp >= n_nodes`` a multiple of 16;
        padding nodes are 0 and never selected. Updated in place.
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
    scale
        An upper bound of ``|x| + |c|`` for every sample ``x`` and every code ``c`` at any time of the pass (see
        :func:`online_som`); ``inf`` when there is none below ``2**60``, and every update then searches in
        float64 only.

    Returns
    -------
    change : float
        The total absolute change of the codes during the pass (R FlowSOM's ``change``), summed only until it
        reaches 1: the early-stopping test ``change < 1`` only needs to know whether it does (the terms are
        non-negative).
    threshold : float
        The radius at the end of the pass.

    Notes
    -----
    The bound. Let ``u = 2**-24``, ``S = scale``, ``d`` the float32 differences and ``delta`` the exact ones
    (``x - c`` in real arithmetic) of one node. Rounding ``x`` and ``c`` to float32 and subtracting errs by at most
    ``a_j = u (1 + u) (|x_j| + |c_j|) + u |delta_j|`` per channel, so ``|d - delta| <= A = u (1 + u) S + u |delta|``
    (Euclidean norms); the float32 sum of ``p`` squares errs by ``gamma_p sum(d**2)``, ``gamma_p = p u / (1 - p u)``
    (any order, with or without fused multiply-adds), and the float64 reference sum by ``g64 |delta|**2``,
    ``g64 = gamma_{p+2}`` in float64. Hence a node's float32 and float64 squared distances differ by at most
    ``E(|delta|) = gamma_p (|delta| + A)**2 + 2 A |delta| + A**2 + g64 |delta|**2`` (plus ``p 2**-148`` for
    underflow), increasing in ``|delta|``. The float32 minimum ``m`` bounds the distance of its node ``b``:
    ``|delta_b| <= rho = (sqrt(m / (1 - gamma_p)) + u (1 + u) S) / (1 - u)``, and every node whose float64 distance
    is at most ``b``'s has ``|delta| <= rho (1 + 2 g64)``. So the float64 winner and every node tied with it have
    float32 distances at most ``m + 2 E(rho (1 + 2 g64))``: all are candidates. The kernel uses twice that margin.
    """
    p, kp = codes_t.shape
    n_nodes = neighbours.shape[0]
    step = (radii[0] - radii[1]) / niter
    xdim = n_nodes // ydim if ydim > 0 else 0
    change = 0.0
    samples = np.empty((_GATHER, p))
    samples32 = np.empty((_GATHER, p), np.float32)
    dist = np.empty(kp, np.float32)
    bits = dist.view(np.int32)
    box = np.zeros(1, np.int32)
    box32 = box.view(np.float32)
    weight = np.zeros(kp)
    # Grid row and column of every node; padding nodes get a column no window contains.
    row_of = np.zeros(kp, np.int64)
    column = np.full(kp, np.iinfo(np.int64).max // 2, np.int64)
    if ydim > 0:
        for cd in range(n_nodes):
            row_of[cd] = cd // ydim
            column[cd] = cd % ydim
    node_index = np.arange(kp).astype(np.int32)
    exact64 = not scale < _MAX_SCALE32
    constants = _bound_constants(p, scale)
    one = np.uint64(1)
    for t_all in range(order.shape[0]):
        t = t_all % _GATHER
        if t == 0:
            _gather(data, order, t_all, samples, samples32)
        # 1. Best-matching unit: float32 candidates, float64 only where float32 cannot decide.
        nearest = -1
        limit = np.int32(0)
        count = n_nodes  # float64 only: every node is a candidate
        first = 0
        last = n_nodes - 1
        index_sum = n_nodes * (n_nodes - 1) // 2
        if not exact64:
            box[0] = _distances32(samples32, t, codes32, dist, base)
            # The limit is compared on the bits (non-negative floats order as their bits).
            box32[0] = _candidate_limit(np.float64(box32[0]), constants)
            limit = box[0]
            # Number and index sum of the candidates (int32 lanes); with one candidate, that is its index.
            count32 = np.int32(0)
            sum32 = np.int32(0)
            for cd in range(kp):
                inside = bits[cd] <= limit
                count32 += np.int32(1) if inside else np.int32(0)
                sum32 += node_index[cd] if inside else np.int32(0)
            count = count32
            index_sum = sum32
            if count == 1:
                nearest = index_sum
            else:
                # The first and last candidates; with at most three, these and the sum name them all.
                first32 = np.int32(kp)
                last32 = np.int32(-1)
                for cd in range(kp):
                    inside = bits[cd] <= limit
                    first32 = min(first32, node_index[cd] if inside else np.int32(kp))
                    last32 = max(last32, node_index[cd] if inside else np.int32(-1))
                first = first32
                last = last32
        if nearest < 0 and count <= 3:
            # Two or three candidates: their float64 distances side by side (independent sums, each in channel
            # order), the lowest index winning ties.
            middle = index_sum - first - last if count == 3 else last
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            for j in range(p):
                xj = samples[t, j]
                d0 = xj - codes_t[j, first]
                d1 = xj - codes_t[j, middle]
                d2 = xj - codes_t[j, last]
                s0 += d0 * d0
                s1 += d1 * d1
                s2 += d2 * d2
            nearest = first
            best = s0
            if s1 < best:
                nearest = middle
                best = s1
            if s2 < best:
                nearest = last
        elif nearest < 0:
            best = np.inf
            for cd in range(first, last + 1):
                if not exact64 and bits[cd] > limit:
                    continue
                s = 0.0
                for j in range(p):
                    d = samples[t, j] - codes_t[j, cd]
                    s += d * d
                if s < best:
                    best = s
                    nearest = cd
        # 2. Update the neighbourhood.
        if threshold < 1.0:
            threshold = 0.5
        alpha = alphas[0] - (alphas[0] - alphas[1]) * (k0 + t_all) / niter
        if ydim > 0:
            r = int(np.floor(threshold))
            wx = row_of[nearest]
            wy = column[nearest]
            y0 = max(0, wy - r)
            y1 = min(ydim - 1, wy + r) + 1
            x0 = max(0, wx - r)
            x1 = min(xdim - 1, wx + r) + 1
            if change < 1.0:
                for q in range(x0, x1):
                    change += _abs_diff_sum(samples, t, codes_t, q * ydim + y0, q * ydim + y1)
            if r == 0:
                for j in range(p):
                    c = codes_t[j, nearest]
                    v = c + (samples[t, j] - c) * alpha
                    codes_t[j, nearest] = v
                    codes32[j, nearest] = v
            elif not exact64 and ydim <= 64 + 2 * (y1 - y0):
                # Rows x0..x1 as one run of nodes, from a multiple of 8 (aligned vectors) to the next multiple of 8
                # after the window, each channel in one vectorised loop. Nodes outside the window get the weight 0
                # instead of alpha: c + (x - c) * 0 is c (|x - c| is finite, see scale; a -0.0 comes back as +0.0),
                # so plain stores replace masked ones. Unsigned indices: numba's wraparound of negative indices
                # would otherwise stop the loops from vectorising.
                first = x0 * ydim + y0
                last = (x1 - 1) * ydim + y1
                lo = np.uint64(first - first % 8)
                hi = np.uint64(last + (-last) % 8)
                first_u = np.uint64(first)
                last_u = np.uint64(last)
                width = np.uint64(y1 - y0)
                cd = lo
                while cd < hi:
                    inside = (np.uint64(column[cd] - y0) < width) & (cd >= first_u) & (cd < last_u)
                    weight[cd] = alpha if inside else 0.0
                    cd += one
                for j in range(p):
                    xj = samples[t, j]
                    cd = lo
                    while cd < hi:
                        c = codes_t[j, cd]
                        v = c + (xj - c) * weight[cd]
                        codes_t[j, cd] = v
                        codes32[j, cd] = v
                        cd += one
            else:
                # One loop per row of the window (wide grids, narrow windows).
                for q in range(x0, x1):
                    lo = np.uint64(q * ydim + y0)
                    hi = np.uint64(q * ydim + y1)
                    for j in range(p):
                        xj = samples[t, j]
                        cd = lo
                        while cd < hi:
                            c = codes_t[j, cd]
                            v = c + (xj - c) * alpha
                            codes_t[j, cd] = v
                            codes32[j, cd] = v
                            cd += one
        else:
            for k in range(n_nodes):
                if neighbour_dist[nearest, k] > threshold:
                    break
                cd = neighbours[nearest, k]
                if change < 1.0:
                    change += _abs_diff_sum(samples, t, codes_t, cd, cd + 1)
                for j in range(p):
                    c = codes_t[j, cd]
                    v = c + (samples[t, j] - c) * alpha
                    codes_t[j, cd] = v
                    codes32[j, cd] = v
        threshold -= step
    return change, threshold


def _aligned_zeros(shape, dtype):
    """Zeros of ``shape`` whose data start on a ``_ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buffer = np.zeros(n + _ALIGN, np.uint8)
    offset = -buffer.ctypes.data % _ALIGN
    return buffer[offset : offset + n].view(dtype).reshape(shape)


def _code_scale(data, codes, alphas, niter):
    """Bound of ``|x| + |c|`` over samples ``x`` and codes ``c`` during a phase, for the float32 search's error bound.

    With learning rates in ``[0, 1]`` every update moves a code to a convex combination of itself and a sample, so
    no code ever gets longer than ``M``, the longest of the samples and initial codes, except by rounding: at most
    ``8 u`` (float64) relative per update, ``M (1 + 16 u niter)`` over a phase. The bound is ``inf`` (float64-only
    search) for learning rates outside ``[0, 1]`` or when it reaches ``_MAX_SCALE32``.
    """
    if not (0.0 <= min(alphas) and max(alphas) <= 1.0):
        return np.inf
    xmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", data, data))))
    cmax = float(np.sqrt(np.max(np.einsum("ij,ij->i", codes, codes))))
    longest = max(xmax, cmax) * (1.0 + 16.0 * _U64 * niter)
    scale = (xmax + longest) * (1.0 + 1e-6)  # the norms themselves are rounded (relative p * u, far below 1e-6)
    return scale if scale < _MAX_SCALE32 else np.inf


def online_som(data, codes, nhbrdist, rlen, alphas, radii, random_state, ydim=0):
    """Train codes with FlowSOM's online SOM for one phase (``rlen`` passes).

    Parameters
    ----------
    data
        ``(n, p)`` float64 training data, finite.
    codes
        ``(n_nodes, p)`` float64 initial codes; not modified.
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
        The trained codes.
    n_iter : int
        The number of passes run (fewer than ``rlen`` when the codes stopped changing).
    """
    data = np.asarray(data, dtype=np.float64)  # any layout: the kernel reads the C-contiguous `source` below
    codes = np.asarray(codes, dtype=np.float64)
    nhbrdist = np.asarray(nhbrdist, dtype=np.float64)
    n_nodes, p = codes.shape
    kp = -(-n_nodes // _NODE_PAD) * _NODE_PAD
    codes_t = _aligned_zeros((p, kp), np.float64)
    codes_t[:, :n_nodes] = codes.T
    codes32 = _aligned_zeros((p, kp), np.float32)
    codes32[:] = codes_t
    base = np.zeros(kp, np.float32)
    base[n_nodes:] = np.inf
    if ydim > 0:
        neighbours = np.zeros((n_nodes, 0), np.int64)
        neighbour_dist = np.zeros((n_nodes, 0))
    else:
        # Stable: nodes at the same distance stay in index order (the order only matters to R's change sum).
        neighbours = np.argsort(nhbrdist, axis=1, kind="stable")
        neighbour_dist = np.ascontiguousarray(np.take_along_axis(nhbrdist, neighbours, axis=1))
    n = data.shape[0]
    niter = rlen * n
    alphas = (float(alphas[0]), float(alphas[1]))
    radii = (float(radii[0]), float(radii[1]))
    scale = _code_scale(data, codes, alphas, niter)
    # Samples are read in random order, a cache miss each: read them from a C-contiguous float32 copy (half the
    # memory) when it holds the data exactly (pixels usually are float32 or integers), else from a float64 one.
    # (The sample of an image fit is channel-major; no C-contiguous float64 copy is made unless it is needed.)
    source = np.ascontiguousarray(data, dtype=np.float32)
    if not np.array_equal(source, data):
        source = np.ascontiguousarray(data)
    n_iter = rlen
    threshold = radii[0]
    for it in range(rlen):
        order = random_state.randint(0, n, size=n)
        change, threshold = online_som_pass(
            source,
            order,
            codes_t,
            codes32,
            base,
            int(ydim),
            neighbours,
            neighbour_dist,
            threshold,
            it * n,
            niter,
            alphas,
            radii,
            scale,
        )
        if change < 1.0:
            n_iter = it + 1
            break
    return np.ascontiguousarray(codes_t[:, :n_nodes].T), n_iter


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
