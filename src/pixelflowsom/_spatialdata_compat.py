"""The one place where private spatialdata API is used: its element-name rule and its raster writer and reader.

pixelflowsom checks output names before any work with spatialdata's own rule, writes the metadata of a labels element
into a staging folder with the writer ``SpatialData.write_element`` calls (the public method writes only to
``sdata.path``, and computes the pixels itself), and reads single labels elements from a store with the reader
``spatialdata.read_zarr`` calls for each (the public function reads every element of a type). Those functions live in
spatialdata's private modules (``spatialdata._core``, ``spatialdata._io``); keeping the imports here means a spatialdata
release that moves them breaks one file, not the package. Each function names the public API to switch to once
spatialdata has one. spatialdata is imported when a function is called, not with this module (it takes seconds).
"""

from __future__ import annotations

__all__ = ["check_valid_name", "read_labels_element", "write_labels"]


def check_valid_name(name: str) -> None:
    """Raise spatialdata's ``ValueError`` if ``name`` is not a valid element name (what ``sdata[name] = ...`` checks).

    Public alternative: none yet (``spatialdata.sanitize_name`` changes a name instead of checking it); switch to a
    public validator when spatialdata exports one.

    Parameters
    ----------
    name : str
        The element name.

    Raises
    ------
    TypeError
        ``name`` is not a str.
    ValueError
        ``name`` is empty, ``"."``, ``".."``, starts with ``"__"`` or holds characters other than letters, digits,
        ``_``, ``-`` and ``.``, as spatialdata's rule says.
    """
    from spatialdata._core.validation import check_valid_name as check

    check(name)


def write_labels(labels, *, group, name: str, storage_options=None) -> None:
    """Write the labels element ``labels`` as ``group/labels/name`` with spatialdata's raster writer.

    Public alternative: ``SpatialData.write_element``, once it can write into a given zarr group; today it writes only
    to ``sdata.path/labels/name`` (see :func:`pixelflowsom._store._stage`).

    Parameters
    ----------
    labels : xarray.DataArray or xarray.DataTree
        The (single-scale or multiscale) labels element.
    group : zarr.Group
        The root group of the store to write into.
    name : str
        The element name.
    storage_options : dict or None, default=None
        Passed on to the writer (e.g. ``{"compressor": ...}``).
    """
    from spatialdata._io import write_labels as write

    write(labels, group=group, name=name, storage_options=storage_options)


def read_labels_element(path, version: str):
    """Read the labels element in the folder ``path`` lazily, with the format ``spatialdata.read_zarr`` would pick.

    Public alternative: ``spatialdata.read_zarr`` once it can read selected elements (today it selects element types
    only, so it would read every labels element of the store).

    Parameters
    ----------
    path : pathlib.Path
        The element's folder, ``root / "labels" / name`` in the store ``root``.
    version : str
        The store's ``spatialdata_attrs["version"]``.

    Returns
    -------
    xarray.DataArray or xarray.DataTree
        The element, its pixels as dask arrays.
    """
    import zarr
    from spatialdata._io.io_raster import _read_multiscale
    from spatialdata._io.io_zarr import get_raster_format_for_read

    reader_format = get_raster_format_for_read(zarr.open_group(str(path), mode="r"), version)
    return _read_multiscale(str(path), "labels", reader_format)
