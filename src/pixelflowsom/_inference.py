"""Lazy, blockwise labelling with dask: the model payload shipped to workers and the ``map_blocks`` glue.

:class:`SOMModel` is the immutable part of a fitted model that labelling needs. :func:`label_table` labels 2D
tables, :func:`label_image` ``(c, [z,] y, x)`` images, one task per block; every block task checks its channel
count against the model before the kernel of :mod:`._nearest` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ._nearest import check_channel_positions, nearest_nodes, nearest_nodes_channel_first


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


@numba.njit(cache=True, nogil=True)
def _ids(nodes, node_metacluster, som_ids, metacluster_ids):
    """1-based ids of every pixel: ``som_ids = nodes + 1``, ``metacluster_ids = node_metacluster[nodes] + 1``.

    Pixels without a node (``-1``: a non-finite channel) get 0 in both; an empty ``som_ids`` is not written. Checks
    the outputs' lengths, and every node against ``node_metacluster``, before writing or reading with them.
    """
    n_nodes = node_metacluster.shape[0]
    write_nodes = som_ids.shape[0] > 0
    if metacluster_ids.shape[0] != nodes.shape[0] or write_nodes and som_ids.shape[0] != nodes.shape[0]:
        raise ValueError("the outputs do not have one entry per pixel")
    for i in range(nodes.shape[0]):
        node = nodes[i]
        if node < 0:
            metacluster_ids[i] = 0
            if write_nodes:
                som_ids[i] = 0
            continue
        if node >= n_nodes:
            raise ValueError("a node outside the model")
        metacluster_ids[i] = node_metacluster[node] + 1
        if write_nodes:
            som_ids[i] = node + 1


#: Pixels labelled at a time in a block (a strip of rows; its int64 nodes take 4 MB).
_STRIP_PIXELS = 1 << 19


def _image_block(block, model, layers, dtype, channels):
    """Block function: label a ``(c, [z,] y, x)`` image block by its channels at positions ``channels``.

    Returns the 1-based ``(2, [z,] y, x)`` stack ``[som_node, metacluster]`` (``layers="both"``) or the
    ``([z,] y, x)`` metacluster image (``layers="metacluster"``), 0 where a selected channel of the pixel is not
    finite. Besides the output, it holds only the int64 nodes of a strip of its rows at a time.
    """
    if len(channels) != model.n_features:
        raise ValueError(
            f"{len(channels)} channel(s) of an image block are selected but the model was fitted on "
            f"{model.n_features}: label images with their channels selected as in fit (PixelFlowSOM.predict/transform "
            "do that)."
        )
    spatial = block.shape[1:]
    # A 2D block is read in place (a numpy-backed image's blocks are strided views), only its selected channels;
    # 3D blocks merge z into y.
    pixels = block if block.ndim == 3 else block.reshape(block.shape[0], -1, block.shape[-1])
    n_rows, n_cols = pixels.shape[1:]
    n = n_rows * n_cols
    out = np.empty((1 if layers == "metacluster" else 2, n), dtype=dtype)
    # A strip of rows at a time: the nodes of a strip (int64) fit in memory the allocator reuses, instead of fresh
    # pages for every block (8 bytes per pixel: 134 MB for a 4096 x 4096 block).
    step = max(1, _STRIP_PIXELS // n_cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        nodes = nearest_nodes_channel_first(pixels[:, r0:r1], model.codes, n_threads=1, channels=channels)
        part = out[:, r0 * n_cols : r1 * n_cols]
        _ids(nodes, model.node_metacluster, part[0] if len(out) == 2 else part[0, :0], part[-1])
    return out[0].reshape(spatial) if layers == "metacluster" else out.reshape((2, *spatial))


def label_image(image, model, *, layers="both", chunks=None, n_ids=None, channels=None):
    """Lazily label an image with one ``map_blocks`` call.

    Parameters
    ----------
    image
        ``(c, [z,] y, x)`` :class:`xarray.DataArray`, numpy- or dask-backed.
    model
        The :class:`SOMModel`, or a dask ``Delayed`` / distributed ``Future`` of it: whatever it is, the graph holds
        it once, every block task depends on that one key.
    layers
        ``"both"``: a ``(2, [z,] y, x)`` stack ``[som_node, metacluster]``; ``"metacluster"``: the metaclusters.
    chunks
        Spatial chunks of the labels (an int, ``"auto"``, or one size per spatial axis); ``None`` keeps the image's
        chunks (a numpy-backed image gets ``"auto"``). A dask-backed image is labelled block by block as it is
        stored (its channel chunks merged), then the labels are rechunked: splitting a stored chunk into smaller
        blocks first would keep it in memory until all its blocks are labelled, and merging chunks would copy them.
    n_ids
        Largest id the output must hold (decides the dtype).
    channels
        Positions along ``c`` of the model's features, in the model's order: every block is labelled by these
        channels, read in place (selecting them beforehand, ``image.isel(c=channels)``, would copy every block's
        selected channels first). ``None``: all channels, in order.

    Returns
    -------
    xarray.DataArray
        Dask-backed, 1-based labels (0 where any channel is NaN), dtype :func:`label_dtype` of ``n_ids``; dims
        ``("label", [z,] y, x)`` with ``label`` coordinate ``["som_node", "metacluster"]``, or the spatial dims.
    """
    import dask.array as da
    import xarray as xr

    channels = check_channel_positions(channels, image.shape[0])
    if isinstance(model, SOMModel) and len(channels) != model.n_features:
        raise ValueError(
            f"{len(channels)} channel(s) of the image are selected but the model was fitted on {model.n_features}: "
            "select the model's channels, in its order, before labelling."
        )
    data = image.data
    spatial_dims = image.dims[1:]
    spatial = None if chunks is None else chunks if isinstance(chunks, tuple) else (chunks,) * len(spatial_dims)
    if not isinstance(data, da.Array):  # blocks of a numpy array are views: cut them as the labels are chunked
        data = da.from_array(data, chunks=(-1, *(spatial or ["auto"] * len(spatial_dims))))
        spatial = None
    if len(data.chunks[0]) > 1:
        # Channels stored in several chunks are merged into one per block below (a copy either way): merge only
        # the selected ones (and read only their chunks).
        data = data[channels]
        channels = np.arange(len(channels))
    data = data.rechunk({0: -1})
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
        channels,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(out_chunks), dtype=dtype),
        token=token,
        **axes,
    )
    if spatial is not None:
        out = out.rechunk(spatial if layers == "metacluster" else (2, *spatial))
    coords.update({d: image.coords[d] for d in spatial_dims if d in image.coords})
    return xr.DataArray(out, dims=dims, coords=coords)
