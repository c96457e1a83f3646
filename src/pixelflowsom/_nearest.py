"""Nearest-node kernel: every pixel's nearest SOM code, the exact float64 argmin at float32 matrix-multiply speed.

The squared distance of pixel ``x`` to node ``c`` is ``|x|^2 - 2 x.c + |c|^2``; the ``|x|^2`` term is the same for
every node, so the winner maximises ``x.c - |c|^2 / 2``, a matrix product. :func:`_nearest_kernel` computes it in
float32, a few hundred pixels at a time (the ``n_pixels x n_nodes`` matrix never exists), keeps the best and second
best score of every pixel and, where the two are closer than the float32 rounding error could explain, recomputes
that pixel's distances exactly in float64. The labels therefore equal a float64 brute-force argmin (on exact ties:
the lowest node index, as :func:`numpy.argmin`), at float32 matrix-multiply speed.

The kernels take pixels channel-first, ``(n_channels, n_pixels)``, which is both an image block ``(c, y, x)``
reshaped and a transposed table, and cast each small sub-block to float32 themselves, so integer images and float64
tables need no converted copy. They release the GIL: dask's threads (and :func:`nearest_nodes`'s) run them in
parallel. The public functions check the shapes of pixels and codes against each other before the kernel runs: the
kernel never reads outside an array.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

#: Pixels per sub-block: its float32 copy stays in L1 cache, its score tile in L2.
_BLOCK = 256
#: Unit roundoff of float32.
_U32 = float(np.finfo(np.float32).eps) / 2


@numba.njit(cache=True, nogil=True)
def _sqdist64(xt, channels, i, codes64, j, squares):
    """Squared Euclidean distance of pixel ``xt[channels, i]`` to code ``codes64[j]``, in float64, summed in order.

    Rounded as a plain loop of products and sums (as scipy's ``cdist``), also inside :func:`_nearest_kernel`, whose
    ``contract`` flag numba passes on to the functions it calls: the squares go through the scratch array
    ``squares`` (``p`` values) before they are summed, so that no product is fused with the sum into a multiply-add.
    """
    p = channels.shape[0]
    for c in range(p):
        diff = np.float64(xt[channels[c], i]) - codes64[j, c]
        squares[c] = diff * diff
    d = 0.0
    for c in range(p):
        d += squares[c]
    return d


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _nearest_kernel(pixels, channels, codes64, labels, sqdist, exact, sums, counts):
    """Assign every pixel of ``pixels`` to its nearest code. Assumes validated input.

    For each sub-block of ``_BLOCK`` pixels: copy it to float32, compute the ``(n_nodes, _BLOCK)`` score tile
    ``c.x - |c|^2 / 2`` and reduce it to the best and second-best score per pixel and the best node. The tile is a
    small GEMM blocked for registers: four nodes times four channels per pass, so that each score is loaded and
    stored once per four channels, and the inner loop over pixels vectorises (channels and nodes are zero-padded to
    multiples of four; padded nodes score ``-inf``). The reduction uses selects, not branches: early in training the
    codes are nearly equal and which node wins is a coin toss, on which a branchy argmax would mispredict half the
    time.

    Parameters
    ----------
    pixels
        ``(n_channels, n_rows, n_cols)`` pixels, channel-first, any real dtype and memory layout: an image block
        ``(c, y, x)`` read in place, or a table ``(n_channels, n)`` as ``(n_channels, 1, n)``. Pixel ``(r, i)`` is
        output ``r * n_cols + i``.
    channels
        ``(p,)`` int64 positions in ``0..n_channels-1`` of the channels compared with the codes' ``p`` columns, in
        the codes' order (an image's selected channels, read where they are: no copy of the block).
    codes64
        ``(n_nodes, p)`` float64 codes, C-contiguous.
    labels
        ``(n_rows * n_cols,)`` int output: index of the nearest code, or -1 where a value of the pixel is not finite.
    sqdist
        ``(n_rows * n_cols,)`` float64 output (or an empty array to skip it): exact squared distance to the nearest
        code.
    exact
        Recompute near-ties in float64 so that labels equal the float64 argmin. Without it the float32 winner is
        kept: fine for training, where early codes are close together and near-ties are everywhere.
    sums, counts
        ``(n_nodes, p)`` and ``(n_nodes,)`` float64 accumulators (or empty arrays to skip them): the sum and number
        of the (float32-rounded) finite pixels assigned to each node are added to them, while the pixels are in
        cache (the batch SOM's per-epoch statistics).
    """
    _, n_rows, n_cols = pixels.shape
    p = channels.shape[0]
    k = codes64.shape[0]
    kp = -(-k // 4) * 4
    pp = -(-p // 4) * 4
    want_dist = sqdist.shape[0] > 0
    want_sums = counts.shape[0] > 0
    pixel_major = pixels.strides[2] > pixels.strides[0]
    codes = np.zeros((kp, pp), np.float32)
    half_norm = np.full(kp, -np.inf, np.float32)
    cmax = 0.0
    for j in range(k):
        s = 0.0
        for c in range(p):
            codes[j, c] = codes64[j, c]
            s += codes64[j, c] * codes64[j, c]
        half_norm[j] = -0.5 * s
        cmax = max(cmax, np.sqrt(s))
    # Squared distance = |x|^2 - 2 * score. Bound on the float32 error of 2 * score (rounding of x and c to float32,
    # the accumulation of the p products, at most ceil(p / 4) + 4 roundings deep, and the norm term):
    # (p + 4) u (|x| + |c|)^2, with a safety factor of 2 for each of the two scores compared.
    rel = 4.0 * (p + 4) * _U32

    buf = np.zeros((pp, _BLOCK), np.float32)  # rows p..pp stay 0
    scores = np.empty((kp, _BLOCK), np.float32)
    best = np.empty(_BLOCK, np.float32)
    second = np.empty(_BLOCK, np.float32)
    bidx = np.empty(_BLOCK, np.int32)
    xnorm = np.empty(_BLOCK, np.float32)
    squares = np.empty(p)
    for r in range(n_rows):
        xt = pixels[:, r, :]
        row = r * n_cols
        for i0 in range(0, n_cols, _BLOCK):
            m = min(_BLOCK, n_cols - i0)
            # The float32 copy of the sub-block and the squared norms of its pixels, in float32 (only the error bound
            # and the finiteness test read them; a norm that overflows is recomputed in float64 below).
            if pixel_major:
                # A transposed row-major table: read each pixel's channels contiguously.
                for i in range(m):
                    acc = np.float32(0.0)
                    for c in range(p):
                        v = np.float32(xt[channels[c], i0 + i])
                        buf[c, i] = v
                        acc += v * v
                    xnorm[i] = acc
            else:
                for i in range(m):
                    xnorm[i] = 0.0
                for c in range(p):
                    channel = channels[c]
                    for i in range(m):
                        v = np.float32(xt[channel, i0 + i])
                        buf[c, i] = v
                        xnorm[i] += v * v
            for j in range(0, kp, 4):
                h0, h1, h2, h3 = half_norm[j], half_norm[j + 1], half_norm[j + 2], half_norm[j + 3]
                for i in range(m):
                    scores[j, i] = h0
                    scores[j + 1, i] = h1
                    scores[j + 2, i] = h2
                    scores[j + 3, i] = h3
                for c in range(0, pp, 4):
                    a0, a1, a2, a3 = codes[j, c], codes[j, c + 1], codes[j, c + 2], codes[j, c + 3]
                    b0, b1, b2, b3 = codes[j + 1, c], codes[j + 1, c + 1], codes[j + 1, c + 2], codes[j + 1, c + 3]
                    d0, d1, d2, d3 = codes[j + 2, c], codes[j + 2, c + 1], codes[j + 2, c + 2], codes[j + 2, c + 3]
                    e0, e1, e2, e3 = codes[j + 3, c], codes[j + 3, c + 1], codes[j + 3, c + 2], codes[j + 3, c + 3]
                    for i in range(m):
                        x0, x1, x2, x3 = buf[c, i], buf[c + 1, i], buf[c + 2, i], buf[c + 3, i]
                        scores[j, i] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                        scores[j + 1, i] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                        scores[j + 2, i] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
                        scores[j + 3, i] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
            for i in range(m):
                best[i] = -np.inf
                second[i] = -np.inf
                bidx[i] = 0
            for j in range(0, kp, 4):
                for i in range(m):
                    b, s2, bi = best[i], second[i], bidx[i]
                    for t in range(4):
                        s = scores[j + t, i]
                        s2 = max(s2, min(s, b))
                        bi = np.int32(j + t) if s > b else bi
                        b = max(b, s)
                    best[i], second[i], bidx[i] = b, s2, bi
            for i in range(m):
                xn = np.float64(xnorm[i])
                if not np.isfinite(xn):
                    xn = 0.0
                    for c in range(p):
                        v = np.float64(xt[channels[c], i0 + i])
                        xn += v * v
                if not np.isfinite(xn):
                    labels[row + i0 + i] = -1
                    if want_dist:
                        sqdist[row + i0 + i] = np.nan
                    continue
                node = bidx[i]
                scale = np.sqrt(xn) + cmax
                exact_dist = -1.0
                tolerance = rel * scale * scale
                if exact and not (2.0 * (np.float64(best[i]) - np.float64(second[i])) > tolerance):
                    # Too close to call in float32: the exact float64 argmin, lowest index on ties, among the nodes
                    # whose float32 score is close enough to the best to be the true winner.
                    exact_dist = np.inf
                    for j in range(k):
                        if 2.0 * (np.float64(best[i]) - np.float64(scores[j, i])) > tolerance:
                            continue
                        d = _sqdist64(xt, channels, i0 + i, codes64, j, squares)
                        if d < exact_dist:
                            exact_dist = d
                            node = j
                labels[row + i0 + i] = node
                if want_sums:
                    counts[node] += 1.0
                    for c in range(p):
                        sums[node, c] += buf[c, i]
                if want_dist:
                    sqdist[row + i0 + i] = (
                        exact_dist if exact_dist >= 0 else _sqdist64(xt, channels, i0 + i, codes64, node, squares)
                    )


def thread_count(n_threads=None) -> int:
    """Return the number of threads to use: ``n_threads``, or every core for ``None`` (at least 1)."""
    if n_threads is None:
        return os.cpu_count() or 1
    return max(1, int(n_threads))


def check_codes(codes, n_channels: int) -> np.ndarray:
    """Return ``codes`` as C-contiguous float64 after checking that they are ``(n_nodes, n_channels)``, finite.

    Raises
    ------
    ValueError
        If the codes are not a non-empty 2D array with one column per channel of the pixels, or not finite. This is
        what keeps the kernel from reading outside an array: it takes the channel count from the pixels.
    """
    codes = np.ascontiguousarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] < 1:
        raise ValueError(f"codes must be a non-empty 2D array (n_nodes, n_channels), got shape {codes.shape}.")
    if codes.shape[1] != n_channels:
        raise ValueError(
            f"The pixels have {n_channels} channel(s) but the codes have {codes.shape[1]}: select the channels the "
            "model was fitted on, in the same order."
        )
    if not np.isfinite(codes).all():
        raise ValueError("codes must be finite.")
    return codes


def check_channel_positions(channels, n_channels: int) -> np.ndarray:
    """Return ``channels`` as int64 positions after checking that they index ``n_channels`` channels.

    ``None`` gives all of them, in order. Positions may repeat and come in any order.

    Raises
    ------
    ValueError
        If ``channels`` is not a non-empty 1-d integer array of positions in ``0..n_channels-1``: what keeps the
        kernels from reading outside the pixels.
    """
    if channels is None:
        return np.arange(n_channels, dtype=np.int64)
    positions = np.asarray(channels)
    if (
        positions.ndim != 1
        or len(positions) == 0
        or positions.dtype.kind not in "iu"
        or positions.min() < 0
        or positions.max() >= n_channels
    ):
        raise ValueError(
            f"channels must be a non-empty 1-d array of positions in 0..{n_channels - 1} (the pixels have "
            f"{n_channels} channels), got {channels!r}."
        )
    return positions.astype(np.int64)


def nearest_nodes_channel_first(
    xt, codes, *, return_distances=False, n_threads=None, exact=True, return_sums=False, channels=None
):
    """Nearest code of every pixel of ``xt`` (pixels channel-first); see :func:`nearest_nodes`.

    ``xt`` is ``(c, n)``, or ``(c, rows, cols)`` (an image block, read in place whatever its strides; the labels are
    then in row-major order). ``channels``, positions in ``0..c-1``, selects and orders the ``p`` channels compared
    with the codes' columns, read where they are (``None``: all ``c``, in order). With ``return_sums``, also return
    the ``(n_nodes, p)`` sum and the ``(n_nodes,)`` count of the pixels assigned to every node (after the distances,
    if those are asked for).
    """
    if xt.ndim not in (2, 3):
        raise ValueError(f"Pixels must be channel-first (p, n) or (p, rows, cols), got shape {xt.shape}.")
    if xt.dtype.kind not in "biuf":
        raise TypeError(f"Pixels must be numeric, got dtype {xt.dtype}.")
    pixels = xt[:, None, :] if xt.ndim == 2 else xt
    n_channels, n_rows, n_cols = pixels.shape
    channels = check_channel_positions(channels, n_channels)
    p = len(channels)
    n = n_rows * n_cols
    codes = check_codes(codes, p)
    k = codes.shape[0]
    labels = np.empty(n, dtype=np.int64)
    sqdist = np.empty(n if return_distances else 0, dtype=np.float64)
    n_threads = min(thread_count(n_threads), max(1, n // (16 * _BLOCK)))
    n_parts = 1 if n_threads == 1 else 4 * n_threads
    # The parts split the rows, or the columns of a single row.
    n_parts = min(n_parts, n_rows) if n_rows > 1 else n_parts
    bounds = np.linspace(0, n_rows if n_rows > 1 else n_cols, n_parts + 1).astype(np.int64)
    sums = np.zeros((n_parts if return_sums else 0, k, p))
    counts = np.zeros((n_parts if return_sums else 0, k))
    empty_sums, empty_counts = np.zeros((0, p)), np.zeros(0)

    def run(i):
        a, b = bounds[i], bounds[i + 1]
        part = pixels[:, a:b, :] if n_rows > 1 else pixels[:, :, a:b]
        if n_rows > 1:
            a, b = a * n_cols, b * n_cols
        _nearest_kernel(
            part,
            channels,
            codes,
            labels[a:b],
            sqdist[a:b] if return_distances else sqdist,
            exact,
            sums[i] if return_sums else empty_sums,
            counts[i] if return_sums else empty_counts,
        )

    if n_parts == 1:
        run(0)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(run, range(n_parts)))
    out = [labels]
    if return_distances:
        out.append(np.sqrt(sqdist))
    if return_sums:
        out += [sums.sum(axis=0), counts.sum(axis=0)]
    return out[0] if len(out) == 1 else tuple(out)


def nearest_nodes(X, codes, *, return_distances=False, n_threads=None, exact=True):
    """Index of the nearest code (Euclidean) for every row of ``X``.

    Rows with a non-finite value get -1.

    Parameters
    ----------
    X
        ``(n, p)`` array of any real dtype.
    codes
        ``(n_nodes, p)`` codes.
    return_distances
        Also return the exact Euclidean distance of each row to its nearest code.
    n_threads
        Number of threads (``None``: all cores).
    exact
        Guarantee the float64 argmin (see :func:`_nearest_kernel`).

    Returns
    -------
    labels : numpy.ndarray
        ``(n,)`` int64 node indices; equal to ``argmin`` of the float64 distances, lowest index on ties.
    distances : numpy.ndarray
        ``(n,)`` float64, only if ``return_distances``.

    Raises
    ------
    ValueError
        If ``X`` is not 2D or ``codes`` do not have one column per column of ``X`` (see :func:`check_codes`).
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2D array (n_pixels, n_channels), got shape {X.shape}.")
    return nearest_nodes_channel_first(X.T, codes, return_distances=return_distances, n_threads=n_threads, exact=exact)
