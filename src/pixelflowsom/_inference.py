"""Lazy, blockwise labelling with dask: the model payload shipped to workers and the ``map_blocks`` glue.

:class:`SOMModel` is the immutable part of a fitted model that labelling needs. :func:`label_table` labels 2D
tables, :func:`label_image` ``(c, [z,] y, x)`` images, one task per block; every block task checks its channel
count against the model before the kernel of :mod:`._nearest` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _image_block(block, model, layers, dtype, channels):
    """Block function: label a ``(c, [z,] y, x)`` image block by its channels at positions ``channels``.

    Returns the 1-based ``(2, [z,] y, x)`` stack ``[som_node, metacluster]`` (``layers="both"``) or the
    ``([z,] y, x)`` metacluster image (``layers="metacluster"``), 0 where a selected channel of the pixel is not
    finite.
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
    nodes = nearest_nodes_channel_first(pixels, model.codes, n_threads=1, channels=channels)
    valid = nodes >= 0
    meta = np.where(valid, model.node_metacluster[nodes] + 1, 0).astype(dtype, copy=False)
    if layers == "metacluster":
        return meta.reshape(spatial)
    out = np.empty((2, nodes.size), dtype=dtype)
    out[0] = np.where(valid, nodes + 1, 0)
    out[1] = meta
    return out.reshape((2, *spatial))


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
        Spatial chunks (an int, ``"auto"``, or one size per spatial axis); ``None`` keeps the image's chunks (a
        numpy-backed image gets ``"auto"``). The ``c`` axis always becomes one chunk.
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
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(-1, *(["auto"] * len(spatial_dims))))
    if len(data.chunks[0]) > 1:
        # Channels stored in several chunks are merged into one per block below (a copy either way): merge only
        # the selected ones (and read only their chunks).
        data = data[channels]
        channels = np.arange(len(channels))
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
        channels,
        chunks=out_chunks,
        dtype=dtype,
        meta=np.empty((0,) * len(out_chunks), dtype=dtype),
        token=token,
        **axes,
    )
    coords.update({d: image.coords[d] for d in spatial_dims if d in image.coords})
    return xr.DataArray(out, dims=dims, coords=coords)
