"""Nearest-node assignment: the hot path that labels every pixel.

The squared distance of pixel ``x`` to node ``c`` is ``|x|^2 - 2 x.c + |c|^2``; the ``|x|^2`` term is the same for
every node, so the winner maximises ``x.c - |c|^2 / 2``, a matrix product. :func:`_nearest_kernel` computes it in
float32, a few hundred pixels at a time (the ``n_pixels x n_nodes`` matrix never exists), keeps the best and second
best score of every pixel and, where the two are closer than the float32 rounding error could explain, recomputes
that pixel's distances exactly in float64. The labels therefore equal a float64 brute-force argmin (on exact ties:
the lowest node index, as :func:`numpy.argmin`), at float32 matrix-multiply speed.

The kernels take pixels channel-first, ``(n_channels, n_pixels)``, which is both an image block ``(c, y, x)``
reshaped and a transposed table, and cast each small sub-block to float32 themselves, so integer images and float64
tables need no converted copy. They release the GIL: dask's threads (and :func:`nearest_nodes`'s) run them in
parallel.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

#: Pixels per sub-block: its float32 copy stays in L1 cache, its score tile in L2.
_BLOCK = 256
#: Unit roundoff of float32.
_U32 = float(np.finfo(np.float32).eps) / 2


@dataclass(frozen=True, eq=False)
class SOMModel:
    """The immutable part of a fitted model that labelling needs: what is shipped to dask workers.

    Parameters
    ----------
    codes
        ``(n_nodes, n_features)`` float64 SOM codes.
    node_metacluster
        ``(n_nodes,)`` 0-based metacluster of every node.
    """

    codes: np.ndarray
    node_metacluster: np.ndarray

    def __post_init__(self):
        codes = np.ascontiguousarray(self.codes, dtype=np.float64)
        codes.setflags(write=False)
        meta = np.ascontiguousarray(self.node_metacluster, dtype=np.int64)
        meta.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        object.__setattr__(self, "node_metacluster", meta)

    @property
    def n_nodes(self) -> int:
        """Number of SOM nodes."""
        return self.codes.shape[0]

    @property
    def n_features(self) -> int:
        """Number of features (channels) of the codes."""
        return self.codes.shape[1]


@numba.njit(cache=True, nogil=True)
def _sqdist64(xt, i, codes64, j, squares):
    """Squared Euclidean distance of pixel ``xt[:, i]`` to code ``codes64[j]``, in float64, summed in channel order.

    Rounded as a plain loop of products and sums (as scipy's ``cdist``), also inside :func:`_nearest_kernel`, whose
    ``contract`` flag numba passes on to the functions it calls: the squares go through the scratch array
    ``squares`` (``p`` values) before they are summed, so that no product is fused with the sum into a multiply-add.
    """
    p = xt.shape[0]
    for c in range(p):
        diff = np.float64(xt[c, i]) - codes64[j, c]
        squares[c] = diff * diff
    d = 0.0
    for c in range(p):
        d += squares[c]
    return d


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _nearest_kernel(pixels, codes64, labels, sqdist, exact, sums, counts):
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
        ``(p, n_rows, n_cols)`` pixels, channel-first, any real dtype and memory layout: an image block ``(c, y, x)``
        read in place, or a table ``(p, n)`` as ``(p, 1, n)``. Pixel ``(r, i)`` is output ``r * n_cols + i``.
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
    p, n_rows, n_cols = pixels.shape
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
                        v = np.float32(xt[c, i0 + i])
                        buf[c, i] = v
                        acc += v * v
                    xnorm[i] = acc
            else:
                for i in range(m):
                    xnorm[i] = 0.0
                for c in range(p):
                    for i in range(m):
                        v = np.float32(xt[c, i0 + i])
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
                        v = np.float64(xt[c, i0 + i])
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
                        d = _sqdist64(xt, i0 + i, codes64, j, squares)
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
                        exact_dist if exact_dist >= 0 else _sqdist64(xt, i0 + i, codes64, node, squares)
                    )


def _n_threads(n_threads):
    if n_threads is None:
        return os.cpu_count() or 1
    return max(1, int(n_threads))


def nearest_nodes_channel_first(xt, codes, *, return_distances=False, n_threads=None, exact=True, return_sums=False):
    """Nearest code of every pixel of ``xt`` (pixels channel-first); see :func:`nearest_nodes`.

    ``xt`` is ``(p, n)``, or ``(p, rows, cols)`` (an image block, read in place whatever its strides; the labels are
    then in row-major order). With ``return_sums``, also return the ``(n_nodes, p)`` sum and the ``(n_nodes,)`` count
    of the pixels assigned to every node (after the distances, if those are asked for).
    """
    pixels = xt[:, None, :] if xt.ndim == 2 else xt
    p, n_rows, n_cols = pixels.shape
    n = n_rows * n_cols
    codes = np.ascontiguousarray(codes, dtype=np.float64)
    k = codes.shape[0]
    labels = np.empty(n, dtype=np.int64)
    sqdist = np.empty(n if return_distances else 0, dtype=np.float64)
    n_threads = min(_n_threads(n_threads), max(1, n // (16 * _BLOCK)))
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

    Assumes validated input. Rows with a non-finite value get -1.

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
    """
    return nearest_nodes_channel_first(
        np.asarray(X).T, codes, return_distances=return_distances, n_threads=n_threads, exact=exact
    )


def _table_block(block, model, column):
    """Block function for 2D dask arrays ``(rows, features)``: label columns ``[som_node, metacluster]``.

    ``column`` selects one of them (``None``: both, as an ``(n, 2)`` block).
    """
    return _finish(nearest_nodes(block, model.codes, n_threads=1), model, column)


def label_table(X, model, *, column=None):
    """Label a 2D numpy or dask array of pixels, blockwise over rows (lazily for dask).

    Parameters
    ----------
    X
        ``(n, p)`` numpy or dask array, validated.
    model
        The :class:`SOMModel` to apply (or a dask future / delayed of one).
    column
        0: SOM node, 1: metacluster, ``None``: both as an ``(n, 2)`` array.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        0-based int64 labels.
    """
    import dask.array as da

    if not isinstance(X, da.Array):
        return _finish(nearest_nodes(X, model.codes), model, column)
    X = X.rechunk({1: -1})
    if column is None:
        return X.map_blocks(
            _table_block, model, None, chunks=(X.chunks[0], (2,)), dtype=np.int64, meta=np.empty((0, 0), np.int64)
        )
    return X.map_blocks(
        _table_block, model, column, drop_axis=1, chunks=(X.chunks[0],), dtype=np.int64, meta=np.empty(0, np.int64)
    )


def _finish(nodes, model, column):
    """Select or stack the ``[som_node, metacluster]`` columns from the node labels."""
    if nodes.size and nodes.min() < 0:
        # Tables are validated eagerly, except lazy dask arrays, whose values are first seen here.
        raise ValueError(
            f"Input X contains NaN or infinity in {int((nodes < 0).sum())} row(s) of this block; "
            "remove or impute them before labelling."
        )
    if column == 0:
        return nodes
    meta = model.node_metacluster[nodes]
    if column == 1:
        return meta
    return np.column_stack([nodes, meta])


def label_dtype(n_ids: int) -> np.dtype:
    """Smallest unsigned integer dtype holding the 1-based ids ``0..n_ids`` of a label image."""
    return np.dtype(np.min_scalar_type(int(n_ids)))


def _image_block(block, model, layers, dtype):
    """Block function: label a ``(c, [z,] y, x)`` image block.

    Returns the 1-based ``(2, [z,] y, x)`` stack ``[som_node, metacluster]`` (``layers="both"``) or the
    ``([z,] y, x)`` metacluster image (``layers="metacluster"``), 0 where a channel of the pixel is not finite.
    """
    spatial = block.shape[1:]
    # A 2D block is read in place (a numpy-backed image's blocks are strided views); 3D blocks merge z into y.
    pixels = block if block.ndim == 3 else block.reshape(block.shape[0], -1, block.shape[-1])
    nodes = nearest_nodes_channel_first(pixels, model.codes, n_threads=1)
    valid = nodes >= 0
    meta = np.where(valid, model.node_metacluster[nodes] + 1, 0).astype(dtype, copy=False)
    if layers == "metacluster":
        return meta.reshape(spatial)
    out = np.empty((2, nodes.size), dtype=dtype)
    out[0] = np.where(valid, nodes + 1, 0)
    out[1] = meta
    return out.reshape((2, *spatial))


def label_image(image, model, *, layers="both", chunks=None, n_ids=None):
    """Lazily label an image with one ``map_blocks`` call.

    Parameters
    ----------
    image
        ``(c, [z,] y, x)`` :class:`xarray.DataArray`, numpy- or dask-backed, channels selected and ordered as the
        model's features.
    model
        The :class:`SOMModel`, or a dask ``Delayed`` / distributed ``Future`` of it: whatever it is, the graph holds
        it once, every block task depends on that one key.
    layers
        ``"both"``: a ``(2, [z,] y, x)`` stack ``[som_node, metacluster]``; ``"metacluster"``: the metaclusters.
    chunks
        Spatial chunks (an int, ``"auto"``, or one size per spatial axis); ``None`` keeps the image's chunks (a
        numpy-backed image gets ``"auto"``). The ``c`` axis always becomes one chunk.
    n_ids
        Largest id the output must hold (decides the dtype).

    Returns
    -------
    xarray.DataArray
        Dask-backed, 1-based labels (0 where any channel is NaN), dtype :func:`label_dtype` of ``n_ids``; dims
        ``("label", [z,] y, x)`` with ``label`` coordinate ``["som_node", "metacluster"]``, or the spatial dims.
    """
    import dask.array as da
    import xarray as xr

    data = image.data
    spatial_dims = image.dims[1:]
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(-1, *(["auto"] * len(spatial_dims))))
    if chunks is None:
        data = data.rechunk({0: -1})
    else:
        spatial = chunks if isinstance(chunks, tuple) else (chunks,) * len(spatial_dims)
        data = data.rechunk((-1, *spatial))
    dtype = label_dtype(n_ids)
    spatial_chunks = data.chunks[1:]
    if layers == "metacluster":  # the channel axis is dropped
        out_chunks, axes, token = spatial_chunks, {"drop_axis": 0}, "pixelflowsom-metaclusters"
        dims, coords = spatial_dims, {}
    else:  # the channel axis becomes the 2-long label axis
        out_chunks, axes, token = ((2,), *spatial_chunks), {}, "pixelflowsom-labels"
        dims, coords = ("label", *spatial_dims), {"label": ["som_node", "metacluster"]}
    out = data.map_blocks(
        _image_block,
        model,
        layers,
        dtype,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(out_chunks), dtype=dtype),
        token=token,
        **axes,
    )
    coords.update({d: image.coords[d] for d in spatial_dims if d in image.coords})
    return xr.DataArray(out, dims=dims, coords=coords)
