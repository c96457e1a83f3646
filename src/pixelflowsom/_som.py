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

#: Samples gathered at a time by the online SOM (a 2,048 x p float64 buffer stays in L2 cache).
_GATHER = 2048


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


@numba.njit(cache=True, nogil=True)
def _abs_diff_sum(samples, t, codes_t, lo, hi):
    """Sum of ``|sample t - code|`` over the nodes ``lo..hi-1`` (R's ``change`` contribution of an update)."""
    total = 0.0
    for j in range(codes_t.shape[0]):
        x = samples[t, j]
        for cd in range(lo, hi):
            total += abs(x - codes_t[j, cd])
    return total


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def online_som_pass(data, order, codes_t, nhbrdist, ydim, threshold, k0, niter, alphas, radii):
    """Run one pass of FlowSOM's online SOM, in place.

    The codes are stored channel-major, ``codes_t[j, node]``, so that the distances to all nodes are a loop over
    nodes that the compiler vectorises; each node's distance is still summed over the channels in order.

    Parameters
    ----------
    data
        ``(n, p)`` float64 training data.
    order
        Row indices of the samples presented in this pass, in order. They are gathered ``_GATHER`` rows at a time
        into a small buffer, so that the update loop reads memory sequentially instead of waiting on one random row
        per update, without an ``n x p`` copy of the data.
    codes_t
        ``(p, n_nodes)`` float64 transposed codes, updated in place.
    nhbrdist
        ``(n_nodes, n_nodes)`` neighbourhood distances between nodes.
    ydim
        When positive, ``nhbrdist`` is the Chebyshev distance on a ``(n_nodes // ydim) x ydim`` grid: the
        neighbourhood of a node is then a window of the grid, i.e. a few runs of consecutive nodes, updated as such.
        Zero for any other neighbourhood (the minimum spanning tree of later ``mst`` phases).
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

    Returns
    -------
    change : float
        The total absolute change of the codes during the pass (R FlowSOM's ``change``), summed only until it
        reaches 1: the early-stopping test ``change < 1`` only needs to know whether it does (the terms are
        non-negative), and a running sum over every update would chain every update's latency into the next.
    threshold : float
        The radius at the end of the pass.
    """
    p, n_nodes = codes_t.shape
    step = (radii[0] - radii[1]) / niter
    dist = np.empty(n_nodes)
    xdim = n_nodes // ydim if ydim > 0 else 0
    change = 0.0
    p4 = p - p % 4
    samples = np.empty((_GATHER, p))
    for t_all in range(order.shape[0]):
        t = t_all % _GATHER
        if t == 0:
            for r in range(min(_GATHER, order.shape[0] - t_all)):
                row = order[t_all + r]
                for j in range(p):
                    samples[r, j] = data[row, j]
        # Four channels per sweep over the nodes; the left-associative sum keeps the channel order of a plain loop.
        dist[:] = 0.0
        for j in range(0, p4, 4):
            x0 = samples[t, j]
            x1 = samples[t, j + 1]
            x2 = samples[t, j + 2]
            x3 = samples[t, j + 3]
            for cd in range(n_nodes):
                d0 = x0 - codes_t[j, cd]
                d1 = x1 - codes_t[j + 1, cd]
                d2 = x2 - codes_t[j + 2, cd]
                d3 = x3 - codes_t[j + 3, cd]
                dist[cd] = dist[cd] + d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
        for j in range(p4, p):
            x = samples[t, j]
            for cd in range(n_nodes):
                diff = x - codes_t[j, cd]
                dist[cd] += diff * diff
        # Lowest index among the minima: a vectorised min, then a search.
        best = dist[0]
        for cd in range(1, n_nodes):
            best = min(best, dist[cd])
        nearest = 0
        while dist[nearest] != best:
            nearest += 1
        if threshold < 1.0:
            threshold = 0.5
        alpha = alphas[0] - (alphas[0] - alphas[1]) * (k0 + t_all) / niter
        if ydim > 0:
            # Chebyshev ball of radius floor(threshold): rows wx-r..wx+r, each the node run y0..y1.
            r = int(np.floor(threshold))
            wx = nearest // ydim
            wy = nearest - wx * ydim
            y0 = max(0, wy - r)
            y1 = min(ydim - 1, wy + r) + 1
            x0 = max(0, wx - r)
            x1 = min(xdim - 1, wx + r) + 1
            if y0 == 0 and y1 == ydim:
                # Whole grid rows: one run of nodes x0 * ydim .. x1 * ydim, a long vectorised loop.
                n_runs, run = 1, (x1 - x0) * ydim
            else:
                n_runs, run = x1 - x0, ydim
            for q in range(n_runs):
                lo = (x0 + q) * ydim + y0
                hi = lo + (run if n_runs == 1 and y0 == 0 and y1 == ydim else y1 - y0)
                if change < 1.0:
                    change += _abs_diff_sum(samples, t, codes_t, lo, hi)
                for j in range(p):
                    x = samples[t, j]
                    for cd in range(lo, hi):
                        codes_t[j, cd] += (x - codes_t[j, cd]) * alpha
        else:
            for cd in range(n_nodes):
                if nhbrdist[nearest, cd] > threshold:
                    continue
                if change < 1.0:
                    change += _abs_diff_sum(samples, t, codes_t, cd, cd + 1)
                for j in range(p):
                    codes_t[j, cd] += (samples[t, j] - codes_t[j, cd]) * alpha
        threshold -= step
    return change, threshold


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
    codes_t = np.array(np.asarray(codes, dtype=np.float64).T, order="C")
    data = np.ascontiguousarray(data, dtype=np.float64)
    nhbrdist = np.ascontiguousarray(nhbrdist, dtype=np.float64)
    n = data.shape[0]
    niter = rlen * n
    alphas = (float(alphas[0]), float(alphas[1]))
    radii = (float(radii[0]), float(radii[1]))
    n_iter = rlen
    threshold = radii[0]
    for it in range(rlen):
        order = random_state.randint(0, n, size=n)
        change, threshold = online_som_pass(
            data, order, codes_t, nhbrdist, int(ydim), threshold, it * n, niter, alphas, radii
        )
        if change < 1.0:
            n_iter = it + 1
            break
    return np.ascontiguousarray(codes_t.T), n_iter


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
        ``"online"`` (:func:`online_som`) or ``"batch"`` (:func:`batch_som`).
    random_state
        A :class:`numpy.random.RandomState` (initial codes, then the online updates).

    Returns
    -------
    codes : numpy.ndarray
        ``(xdim * ydim, p)`` trained codes.
    n_iter : int
        Passes (online) or epochs (batch) run, summed over the phases.

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
    return codes, n_iter
