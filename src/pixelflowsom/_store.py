"""Add labels elements to a SpatialData object and its zarr store: one computation, O(N) store work, crash-safe swaps.

The adapter (:func:`pixelflowsom.harpy.im.flowsom`) and the command line call, in this order:

- :func:`check_output_names`, before any work: the output names are valid, distinct, free (or ``overwrite``);
- :func:`scheduler`, around the work: run dask on a ``distributed.Client`` if one is given;
- :func:`write_label_stacks`: compute the ``(2, [z,] y, x)`` label stacks of all images in one dask computation and
  add two labels elements per image to ``sdata``, writing them into its store if it is backed.

:func:`relabel_metaclusters` rewrites metacluster labels elements from the SOM-node labels elements and a new
node -> metacluster mapping, without model or image: the new labels are the lookup ``lut[node_labels]``, computed
lazily from the node elements (every level of a multiscale one), all in one dask computation that reads every node
chunk once and writes the new chunks (Blosc LZ4 with bit shuffling: fast to write and to read) as it goes.

Both write with :func:`_write_labels` (any list of labels elements), by the protocol below, and can keep a record
with every metacluster element written (a JSON-serialisable dict: the mapping, the metacluster names, the node
element's name...): in the element's zarr group attributes under the key ``"pixelflowsom"`` (:data:`ATTRS_KEY`),
beside spatialdata's ``ome`` and ``spatialdata_attrs``, written while the element is still in the staging folder, so
the record arrives atomically with the element it describes; for an in-memory ``sdata`` in the element's
``.attrs["pixelflowsom"]``. :func:`read_label_attrs` reads it back.

Write protocol for a zarr-backed ``sdata`` (``P`` is ``sdata.path``). Outside the staging folder every step is one
atomic filesystem operation (a rename, an exchange, or zarr's write of a ``zarr.json``: a temporary file, then
``os.replace``), so a process killed between any two of them leaves a store that ``spatialdata.read_zarr`` opens, in
which every output name holds its complete old element, or its complete new one, or, if it had none, nothing:

1. :func:`remove_leftovers` removes what an earlier, killed call left (see there).
2. Staging: the new elements are written under ``P/.pixelflowsom-<token>-<c|n>/<i>/labels/<name>``, each
   ``P/.pixelflowsom-.../<i>`` a zarr root of its own, by spatialdata's own raster writer (so their metadata is
   exactly what ``SpatialData.write_element`` writes, plus the ``"pixelflowsom"`` record in the element group's
   attributes if the call has one; see :func:`_stage`), then all their pixels in ONE ``dask.compute`` of
   ``da.store`` into their arrays (every chunk is written, also one of zeros, which ``write_element`` would leave
   out: zarr's comparison of each chunk with the fill value takes as long as reading the chunk).
   The staging folder has no ``zarr.json``: it is not a node of the store's zarr
   hierarchy, ``read_zarr`` (which reads only the ``images``, ``labels``, ... groups) never looks at it, and zarr's
   consolidation skips it. The store itself is not touched: a failure here removes the staging folder and leaves the
   store byte-identical. The ``c`` (``n``) in the name records that the store has (has no) consolidated metadata.
3. If the store has consolidated metadata, it is removed from the root ``zarr.json`` (one atomic rewrite). From now
   on every reader lists and reads the store's directories themselves, never a stale description: zarr trusts
   consolidated metadata for array dtype, shape and chunks, so keeping the old description while a directory holds
   the new array would corrupt reads (``spatialdata.read_zarr`` itself takes only the element names and the ome
   version from it, and reads the arrays' own ``zarr.json``).
4. If the store has no ``labels`` group yet, an empty one is created.
5. For every output: if ``P/labels/<name>`` exists, it and the staged element are exchanged in ONE atomic syscall
   (``renameat2(RENAME_EXCHANGE)`` on Linux, ``renamex_np(RENAME_SWAP)`` on macOS): the old element now lies in the
   staging folder; otherwise the staged element is renamed into place.
6. The ``labels`` group's ``ome.labels`` list (NGFF's list of labels, not read by spatialdata) gains the new names.
7. If the store had consolidated metadata: one ``SpatialData.write_consolidated_metadata()``, now describing the
   new elements (it skips the staging folder, which still holds the old ones).
8. The staging folder (with the old elements) is removed.
9. The new elements are read back lazily, each from its own folder, and put into ``sdata.labels``.

Where the filesystem cannot exchange two directories atomically (e.g. NFS, Windows), step 5 falls back to two
renames: the old element to ``.../<i>/old/<name>``, then the new one into place. A process killed between the two
leaves the name empty until :func:`remove_leftovers` (run first by the next call) renames the old element back.

Store work for N new elements: per element a constant number of metadata writes and one rename (plus its chunks);
per call one ``zarr.json`` rewrite of the root without consolidated metadata, one consolidation, one update of the
labels group's list, and no re-reading of the store (the new elements are read from their own folders). Nothing is
computed twice and nothing intermediate is kept: the pixels go straight from the computation into the new elements'
arrays, so harpy's ``persist_intermediate`` has nothing left to choose.
"""

from __future__ import annotations

import copy
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress
from pathlib import Path

import numpy as np
import xarray as xr

from pixelflowsom._images import SPATIAL_DIMS, full_resolution

#: Prefix of the staging folder a call creates at the root of the store (a leading dot: also hidden from listings).
STAGING_PREFIX = ".pixelflowsom-"
_STAGING_RE = re.compile(r"^\.pixelflowsom-[0-9a-f]{16}-[cn]$")
#: Temporary files of zarr's atomic writes (``zarr.json`` -> ``zarr.<uuid4 hex>.partial``), left by a killed write.
_PARTIAL_RE = re.compile(r"^zarr\.[0-9a-f]{32}\.partial$")
_ELEMENT_TYPES = ("images", "labels", "points", "shapes", "tables")
#: Key of the record a call keeps with an element: in its zarr group's attributes, or in memory in its ``.attrs``.
ATTRS_KEY = "pixelflowsom"
#: Threads that write or read the metadata of many elements at once (their time goes to waiting on zarr's I/O).
_METADATA_THREADS = 8


# ---------------------------------------------------------------------------------------------------------------------
# checks before any work


def check_image_names(sdata, image_names) -> None:
    """Raise a ``KeyError`` naming every image of ``image_names`` that ``sdata`` lacks, and listing its images.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object holding the images.
    image_names : list of str
        The image element names a call reads.

    Raises
    ------
    KeyError
        An image element is not in ``sdata.images``.
    """
    missing = [name for name in image_names if name not in sdata.images]
    if missing:
        raise KeyError(f"Image element(s) {missing} not found in sdata; available images: {list(sdata.images)}.")


def check_output_names(
    sdata, image_names, cluster_names, metacluster_names, overwrite, *, overwrite_hint="pass overwrite=True"
) -> None:
    """Check the output labels names of a call before any work; raise if one cannot be written.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object the labels are for, in memory or backed by a zarr store.
    image_names : list of str
        The input image names (an output name may not be one of them).
    cluster_names, metacluster_names : list of str
        The output names: SOM-node labels and metacluster labels, one of each per image.
    overwrite : bool
        Whether existing labels elements with an output name may be replaced.
    overwrite_hint : str, default="pass overwrite=True"
        How the caller's user allows replacing, in the message (the command line says ``"pass --overwrite"``).

    Raises
    ------
    TypeError
        An output name is not a str.
    ValueError
        An output name is not a valid spatialdata element name, starts with ``"."`` (``spatialdata.read_zarr``
        skips such elements: the labels would vanish from the store), is used more than once (also when names differ
        only in case: spatialdata requires names unique regardless of case), differs only in case from an element of
        ``sdata``, is the name of a non-labels element (in ``sdata`` or, if backed, in its store), or names an
        existing labels element (in ``sdata`` or its store) while ``overwrite`` is false. Also if ``sdata`` is backed
        by a store in the legacy zarr v2 format, which this module does not write into.
    """
    from pixelflowsom._spatialdata_compat import check_valid_name  # spatialdata's own rule, not public

    outputs = list(cluster_names) + list(metacluster_names)
    for name in outputs:
        if not isinstance(name, str):
            raise TypeError(f"Output name {name!r} must be a str.")
        try:
            check_valid_name(name)
        except ValueError as err:
            raise ValueError(f"Output name {name!r} is not a valid spatialdata element name: {err}") from None
        if name.startswith("."):
            what = "the temporary names of pixelflowsom" if name.startswith(STAGING_PREFIX) else "hidden names"
            raise ValueError(
                f"Output name {name!r} starts with '.' ({what}): spatialdata.read_zarr skips such elements, so the "
                "labels would vanish when the store is read; choose another output name."
            )
    repeated = sorted({n for n in outputs if outputs.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Output name(s) {repeated} are used more than once; every cluster and metacluster output needs its own "
            "name."
        )
    folded = [n.casefold() for n in outputs]
    clashing = sorted({n for n, f in zip(outputs, folded, strict=True) if folded.count(f) > 1})
    if clashing:
        raise ValueError(
            f"Output names {clashing} differ only in case; spatialdata requires element names unique regardless of "
            "case. Choose names that differ otherwise."
        )
    kinds = {name: kind for kind, name, _ in sdata.gen_elements()}
    by_fold = {name.casefold(): name for name in kinds}
    root = _store_root(sdata)
    if root is not None:
        _check_store_format(root)
    for name in outputs:
        on_disk = _kind_on_disk(root, name) if root is not None else None
        kind = kinds.get(name, on_disk)
        if name in image_names or (kind is not None and kind != "labels"):
            where = "" if name in kinds or name in image_names else f" (in its zarr store {root})"
            raise ValueError(
                f"Output name {name!r} is already the name of a {kind or 'images'} element of sdata{where}; "
                "choose another output name."
            )
        if name not in kinds and name.casefold() in by_fold:
            raise ValueError(
                f"Output name {name!r} differs only in case from the element {by_fold[name.casefold()]!r} of sdata; "
                "spatialdata requires element names unique regardless of case. Choose another output name."
            )
        if kind is not None and not overwrite:
            if name in kinds:
                raise ValueError(f"Labels element {name!r} already exists in sdata; {overwrite_hint} to replace it.")
            raise ValueError(
                f"Labels element {name!r} already exists in sdata's zarr store {root} (though not in sdata); "
                f"{overwrite_hint} to replace it."
            )


def scheduler(client):
    """Return a context manager that runs dask on ``client`` (a ``distributed.Client``), or changes nothing if None.

    Parameters
    ----------
    client : distributed.Client or None
        The client to compute on.

    Returns
    -------
    contextlib.AbstractContextManager
        ``dask.config.set(scheduler=client)``, or a ``contextlib.nullcontext()``.
    """
    import dask

    return dask.config.set(scheduler=client) if client is not None else nullcontext()


# ---------------------------------------------------------------------------------------------------------------------
# the writer


def write_label_stacks(sdata, image_names, stacks, names, *, scale_factors=None, attrs=None) -> None:
    """Compute label stacks in one dask computation and add them to ``sdata`` (and its store) as labels elements.

    ``stacks[i]`` is the lazy ``(2, [z,] y, x)`` label stack of the image element ``image_names[i]`` (layer 0: SOM
    nodes, layer 1: metaclusters, as :meth:`pixelflowsom.PixelFlowSOM.transform` returns it); its two layers become
    the labels elements ``names[i] = (cluster_name, metacluster_name)``, parsed with the image's transformations and
    ``scale_factors``. Existing labels elements of these names are replaced (check the names first with
    :func:`check_output_names`).

    All stacks are computed in one dask computation, each block once for both layers (and every pyramid level), on
    the configured scheduler (see :func:`scheduler`). For an in-memory ``sdata`` the labels (every pyramid level)
    are persisted in memory. For a zarr-backed ``sdata`` the computed blocks go straight into the new elements'
    arrays in the store (memory: a few chunks per worker, whatever the number of images), the elements are swapped
    into place atomically and read back lazily; the store work is O(number of elements): no re-read of the store per
    element, consolidated metadata written once.
    The module docstring gives the exact protocol; a process killed at any point leaves every output name with its
    complete old or complete new element, and leftovers that :func:`remove_leftovers` (run first by every call)
    removes.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object holding the images, in memory or backed by a (zarr v3) store.
    image_names : sequence of str
        The image elements the stacks label.
    stacks : sequence of xarray.DataArray
        One lazy (dask-backed) ``(2, [z,] y, x)`` stack of unsigned integers per image, dims ``(any, "y", "x")`` or
        ``(any, "z", "y", "x")``, with the image's spatial shape. The computed blocks must have the declared dtype.
    names : sequence of (str, str)
        The two output names of each image.
    scale_factors : list, optional
        As in ``spatialdata.models.Labels2DModel.parse``: the labels become multiscale ``DataTree`` elements.
    attrs : dict or sequence of dict, optional
        A record to keep with the metacluster elements (e.g. ``{"mapping": [metacluster id of node 1, ...],
        "names": {"1": "tumour"}}``): one JSON-serialisable dict for all of them, or one dict (or None) per image.
        Numpy arrays and scalars become lists and numbers, keys str (as JSON has them); ``"som_clusters"`` is set to
        the name of the image's SOM-node element. Written into the element's zarr group attributes under
        :data:`ATTRS_KEY` (``"pixelflowsom"``) together with the element, or kept in its ``.attrs`` in memory; read
        it with :func:`read_label_attrs`. None (the default): no record.

    Raises
    ------
    KeyError
        An image name is not in ``sdata``.
    ValueError, TypeError
        Mismatched lengths, a stack of the wrong dims, shape or dtype, an output name :func:`check_output_names`
        refuses (with ``overwrite=True``), ``attrs`` not JSON-serialisable or not one per image, another
        element of ``sdata`` reading its data from the folder of an element to replace, a backed store in the legacy
        zarr v2 format, or a computed block of another dtype than declared.
    Exception
        Whatever the computation raises: then ``sdata`` and its store are left unchanged
        (the store byte for byte).

    Notes
    -----
    A store has one writer at a time: :func:`remove_leftovers` would remove the staging folder of a concurrent call.
    On dask's threaded scheduler a failed computation is waited for before its staging folder is removed; on a
    ``distributed.Client``, tasks still running when the computation failed may write into the staging folder after
    the call has raised: the next call removes it.
    In-memory elements that another object still holds and that were read from a replaced element's folder read the
    new files after the swap (as after ``SpatialData.delete_element_from_disk`` and ``write_element``); the elements
    in ``sdata`` itself are replaced by the new ones.
    """
    image_names, stacks, names = _check_inputs(sdata, image_names, stacks, names)
    outputs = [name for pair in names for name in pair]
    records = {
        metaclusters: {**record, "som_clusters": clusters}
        for (clusters, metaclusters), record in zip(names, _check_attrs(attrs, len(names)), strict=True)
        if record is not None
    }
    elements = _parse_labels(sdata, image_names, stacks, scale_factors)
    _write_labels(sdata, outputs, elements, records)


def relabel_metaclusters(sdata, node_names, metacluster_names, mapping, *, attrs=None) -> None:
    """Rewrite metacluster labels elements from SOM-node labels elements and a new node -> metacluster mapping.

    No model and no image is needed: the metacluster labels of a pixel are ``lut[node_label]`` with ``lut[0] = 0``
    (unlabelled) and ``lut[i] = mapping[i - 1]``, the metacluster id (1-based) of node ``i`` (1-based). For every
    pair, the labels element ``metacluster_names[i]`` becomes that lookup of the labels element ``node_names[i]``,
    lazily, in the smallest unsigned dtype that holds the largest id of ``mapping``, with the node element's
    transformations and chunks, and the same levels as the existing metacluster element (the lookup is applied to
    every level of a multiscale node element: nearest-neighbour downsampling commutes with a lookup). All elements
    are written in ONE dask computation by the protocol of the module docstring (the one of
    :func:`write_label_stacks`: a process killed at any point leaves every metacluster name with its complete old
    or complete new element), which reads every chunk of the node elements once and holds a few chunks per worker.

    Every new element keeps the record ``{**attrs, "mapping": [...], "som_clusters": node_name}`` (see
    :func:`read_label_attrs`): the next call (or command) finds the mapping, the node count and the names there.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object holding the node labels elements, in memory or backed by a (zarr v3) store.
    node_names : sequence of str
        The SOM-node labels elements (1-based node id per pixel, 0 = unlabelled), 2D or 3D, unsigned integers.
    metacluster_names : sequence of str
        The metacluster labels elements to write (replaced if they exist, else created), one per node element.
    mapping : array-like of int
        The 1-based metacluster id of every node, ``mapping[i - 1]`` for node ``i``: one-dimensional, integers
        ``>= 1``, one per SOM node.
    attrs : dict or sequence of dict, optional
        More of the record to keep with the new elements (e.g. ``{"names": {"1": "tumour"}}``), as in
        :func:`write_label_stacks`: one dict for all, or one (or None) per pair; ``"mapping"`` and
        ``"som_clusters"`` are set by this call.

    Raises
    ------
    TypeError
        A name is not a str (or the names are one str, not a sequence), ``mapping`` is not integers, a node
        element's dtype is not integer, ``attrs`` is not JSON-serialisable dicts.
    KeyError
        A node element is not in ``sdata.labels``.
    ValueError
        The name lists (or the ``attrs`` per pair) differ in length; ``mapping`` is empty, not one-dimensional, or
        has an id below 1; its length differs from the node count recorded with an existing metacluster element of
        the same node element; a metacluster name is a node element, an image or another non-labels element, or one
        :func:`check_output_names` refuses; the existing metacluster element's levels are not those of the node
        element (or its full resolution); a node element holds a node id above ``len(mapping)`` (found during the
        computation: nothing is written). All before any store work, except the last, which leaves the store
        byte-identical.
    Exception
        Whatever the computation raises: then ``sdata`` and its store are left unchanged.

    Notes
    -----
    The cost is one pass over the node labels: read a chunk, look it up, compress and write the new chunk; plus the
    store work of :func:`write_label_stacks` for as many elements. The new chunks are compressed with Blosc LZ4 with
    bit shuffling: spatialdata's default, Zstandard, takes 2 to 12 times as long to compress them (up to twice the
    whole relabelling), into up to half the space (labels are small beside the images they label).
    """
    node_names = _name_list(node_names, "node_names")
    metacluster_names = _name_list(metacluster_names, "metacluster_names")
    lut = _lookup_table(mapping)
    if len(node_names) != len(metacluster_names):
        raise ValueError(
            f"Got {len(node_names)} node labels names and {len(metacluster_names)} metacluster labels names; pass one "
            "metacluster name per node labels element."
        )
    missing = [name for name in node_names if name not in sdata.labels]
    if missing:
        raise KeyError(
            f"SOM-node labels element(s) {missing} not found in sdata; available labels: {list(sdata.labels)}."
        )
    clashing = sorted(set(metacluster_names) & set(node_names))
    if clashing:
        raise ValueError(
            f"Metacluster name(s) {clashing} are also SOM-node labels elements of this call; the node labels would be "
            "replaced by their own lookup. Choose other metacluster names."
        )
    check_output_names(sdata, [], [], metacluster_names, overwrite=True)
    extra = _check_attrs(attrs, len(metacluster_names))
    root = _store_root(sdata)
    if root is not None:
        _check_not_backing(sdata, root, metacluster_names)
    n_nodes = len(lut) - 1
    elements, records = [], {}
    for node_name, name, record in zip(node_names, metacluster_names, extra, strict=True):
        recorded = _recorded_node_count(sdata, name, node_name)
        if recorded is not None and recorded != n_nodes:
            raise ValueError(
                f"The mapping has {n_nodes} entries, but the metacluster labels {name!r} record a mapping of "
                f"{recorded} SOM nodes for the node labels {node_name!r}; pass one metacluster id per node."
            )
        elements.append(_lookup_element(sdata, node_name, name, lut))
        records[name] = {**(record or {}), "mapping": lut[1:].tolist(), "som_clusters": node_name}
    _write_labels(sdata, metacluster_names, elements, records, compressor=_relabel_compressor())


def read_label_attrs(sdata, name) -> dict | None:
    """Return the record kept with a labels element (see :func:`write_label_stacks`), or None if it has none.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object, in memory or backed by a zarr store.
    name : str
        The labels element.

    Returns
    -------
    dict or None
        The element's ``.attrs["pixelflowsom"]`` if it has one; else, if ``sdata`` is backed and its store holds
        the element (read from there, or not in ``sdata``), the ``"pixelflowsom"`` attribute of its zarr group.
        A new dict each call (JSON types: keys are str, sequences lists).

    Raises
    ------
    KeyError
        ``name`` is neither a labels element of ``sdata`` nor one of its store.
    """
    import zarr

    element = sdata.labels.get(name) if name in sdata.labels else None
    if element is not None and ATTRS_KEY in element.attrs:
        return copy.deepcopy(element.attrs[ATTRS_KEY])
    root = _store_root(sdata)
    folder = None if root is None else root / "labels" / name
    on_disk = folder is not None and (folder / "zarr.json").is_file()
    if element is None and not on_disk:
        raise KeyError(f"Labels element {name!r} not found in sdata; available labels: {list(sdata.labels)}.")
    if not on_disk or (element is not None and not _reads_from(element, folder)):
        return None
    return zarr.open_group(str(folder), mode="r", use_consolidated=False).attrs.asdict().get(ATTRS_KEY)


def remove_leftovers(path_or_sdata) -> list[Path]:
    """Remove what killed writes (:func:`write_label_stacks`, ...) left in a store; return the removed paths.

    A call killed before it completed leaves its staging folder ``.pixelflowsom-<16 hex>-<c|n>`` at the root of the
    store (new elements not yet swapped in, old elements swapped out), and a process killed inside one of zarr's
    atomic metadata writes leaves a ``zarr.<32 hex>.partial`` file (in the store's root or ``labels`` folder). This
    function, run first by every call of :func:`write_label_stacks` and :func:`relabel_metaclusters`:

    1. renames back any old element that a killed two-rename swap (only where atomic exchange is unavailable) had
       moved aside and whose name is now empty;
    2. if a removed call had found consolidated metadata in the store (the ``c``), consolidates the metadata anew:
       the call may have died after removing it (step 3 of the protocol);
    3. removes the staging folders and the ``.partial`` files.

    Each step leaves a store that ``spatialdata.read_zarr`` opens, so a process killed here too is recovered by the
    next run. Nothing else is touched. Do not run it while another process writes into the store.

    Parameters
    ----------
    path_or_sdata : str, os.PathLike or spatialdata.SpatialData
        The path of a local zarr store, or a SpatialData object (nothing to do if it is not backed).

    Returns
    -------
    list of pathlib.Path
        The removed staging folders and files (empty for a clean store).
    """
    root = Path(path_or_sdata) if isinstance(path_or_sdata, str | os.PathLike) else _store_root(path_or_sdata)
    if root is None or not root.is_dir():
        return []
    stagings = sorted(
        Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and _STAGING_RE.match(e.name)
    )
    partials = [
        Path(e.path)
        for folder in (root, root / "labels")
        if folder.is_dir()
        for e in os.scandir(folder)
        if e.is_file(follow_symlinks=False) and _PARTIAL_RE.match(e.name)
    ]
    for staging in stagings:
        _restore_aside(root, staging)
    if any(staging.name.endswith("-c") for staging in stagings):
        # Before the staging folders go: they are the record that the store had consolidated metadata.
        _consolidate(root)
    for staging in stagings:
        shutil.rmtree(staging)
    for partial in partials:
        partial.unlink(missing_ok=True)
    return stagings + partials


# ---------------------------------------------------------------------------------------------------------------------
# inputs and elements


def _check_inputs(sdata, image_names, stacks, names):
    """Validate the arguments of :func:`write_label_stacks`; return them as lists."""
    image_names, stacks, names = list(image_names), list(stacks), [tuple(pair) for pair in names]
    if not len(image_names) == len(stacks) == len(names):
        raise ValueError(
            f"Got {len(image_names)} image names, {len(stacks)} label stacks and {len(names)} name pairs; pass one "
            "stack and one (cluster, metacluster) name pair per image."
        )
    check_image_names(sdata, image_names)
    for image_name, stack, pair in zip(image_names, stacks, names, strict=True):
        if len(pair) != 2:
            raise ValueError(f"Output names {pair!r} of image {image_name!r} must be a (cluster, metacluster) pair.")
        if not isinstance(stack, xr.DataArray):
            raise TypeError(
                f"The label stack of image {image_name!r} is a {type(stack).__name__}; expected an xarray.DataArray."
            )
        spatial = tuple(stack.dims[1:])
        if stack.ndim not in (3, 4) or stack.shape[0] != 2 or spatial != SPATIAL_DIMS[stack.ndim - 1]:
            raise ValueError(
                f"The label stack of image {image_name!r} has dims {stack.dims} and shape {stack.shape}; expected "
                "(2, y, x) with dims (any, 'y', 'x') or (2, z, y, x) with dims (any, 'z', 'y', 'x')."
            )
        if stack.dtype.kind != "u":
            raise TypeError(f"The label stack of image {image_name!r} has dtype {stack.dtype}; expected unsigned ints.")
        image = full_resolution(sdata.images[image_name])
        expected = {d: image.sizes.get(d) for d in spatial}
        if tuple(expected.values()) != stack.shape[1:]:
            got = dict(zip(spatial, stack.shape[1:], strict=True))
            raise ValueError(
                f"The label stack of image {image_name!r} has spatial shape {got}, "
                f"the image {expected}; the labels must cover the image pixel for pixel."
            )
    clusters, metaclusters = [p[0] for p in names], [p[1] for p in names]
    check_output_names(sdata, image_names, clusters, metaclusters, overwrite=True)
    root = _store_root(sdata)
    if root is not None:
        _check_not_backing(sdata, root, clusters + metaclusters)
    return image_names, stacks, names


def _name_list(names, what) -> list:
    if isinstance(names, str):
        raise TypeError(f"{what} must be a sequence of str (one per element), not the str {names!r}.")
    names = list(names)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{what} holds {name!r}, not a str.")
    return names


def _lookup_table(mapping) -> np.ndarray:
    """Return ``lut``: ``lut[0] = 0``, ``lut[i] = mapping[i - 1]``, in the smallest unsigned dtype for its ids."""
    array = np.asarray(mapping)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"The mapping must be one-dimensional with one metacluster id per SOM node; got shape {array.shape}."
        )
    if array.dtype.kind not in "iu":
        raise TypeError(f"The mapping must hold integers (1-based metacluster ids); got dtype {array.dtype}.")
    low = int(array.min())
    if low < 1:
        node = int(np.argmax(array < 1)) + 1
        raise ValueError(
            f"The mapping gives node {node} the metacluster id {low}; ids are 1-based (0 is for unlabelled pixels)."
        )
    lut = np.zeros(array.size + 1, dtype=np.min_scalar_type(int(array.max())))
    lut[1:] = array
    return lut


def _check_attrs(attrs, n) -> list:
    """Return the ``n`` records of ``attrs`` (one dict for all, or one dict or None each), JSON-normalised."""
    import json

    if attrs is None:
        return [None] * n
    if isinstance(attrs, dict):
        attrs = [attrs] * n
    elif isinstance(attrs, str | bytes) or not hasattr(attrs, "__len__"):
        raise TypeError(f"attrs must be a dict, or a sequence of one dict (or None) per image; got {attrs!r}.")
    attrs = list(attrs)
    if len(attrs) != n:
        raise ValueError(f"Got {len(attrs)} attrs for {n} images; pass one dict for all, or one (or None) per image.")
    records = []
    for i, record in enumerate(attrs):
        if record is not None and not isinstance(record, dict):
            raise TypeError(f"attrs[{i}] must be a dict (or None); got a {type(record).__name__}.")
        try:
            records.append(
                None if record is None else json.loads(json.dumps(record, default=_json_default, allow_nan=False))
            )
        except (TypeError, ValueError) as err:
            raise TypeError(f"attrs[{i}] is not JSON-serialisable: {err}") from None
    return records


def _json_default(value):
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _reads_from(element, folder: Path) -> bool:
    """Whether a (lazy) element reads any of its data from ``folder``."""
    from spatialdata import get_dask_backing_files

    folder = folder.resolve()
    return any(Path(file).is_relative_to(folder) for file in get_dask_backing_files(element))


def _recorded_node_count(sdata, name, node_name) -> int | None:
    """Return the length of the mapping recorded with the metacluster element ``name`` for ``node_name``, if any."""
    in_store = _store_root(sdata) is not None and (_store_root(sdata) / "labels" / name / "zarr.json").is_file()
    if name not in sdata.labels and not in_store:
        return None
    record = read_label_attrs(sdata, name)
    if not isinstance(record, dict) or not isinstance(record.get("mapping"), list):
        return None
    if record.get("som_clusters", node_name) != node_name:
        return None
    return len(record["mapping"])


def _relabel_compressor():
    """Blosc LZ4 with bit shuffling: the relabelled chunks' codec.

    Compresses a 1024^2 uint8 chunk of metacluster labels 1.8 times (smooth labels: 1.3 ms, not 2.3 ms) to 12 times
    (speckled labels: 0.5 ms, not 5.7 ms) faster than spatialdata's default, Zstandard (level 3), which would make the
    relabelling take up to twice as long; the chunks also read faster. The price: smooth labels take twice the space
    (an 8192^2 element: 22 MB, not 11 MB; the 40-channel image it labels: 10.7 GB), speckled ones 20 % more.
    """
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def _lookup_block(block, lut):
    """``lut[block]``; a ValueError for a node id outside ``0..len(lut) - 1`` (take checks the bounds as it reads)."""
    if block.dtype.kind == "i" and block.size and block.min() < 0:
        raise ValueError(f"The SOM-node labels hold the negative id {int(block.min())}.")
    try:
        return np.take(lut, block)
    except IndexError:
        raise ValueError(
            f"The SOM-node labels hold the node id {int(block.max())}, but the mapping covers nodes 1 to "
            f"{len(lut) - 1}; pass one metacluster id per node. Nothing was written."
        ) from None


def _lookup_element(sdata, node_name, name, lut):
    """Return the lazy labels ``lut[node labels]``, with the levels of the existing element ``name`` (if any)."""
    from spatialdata.models import Labels2DModel, Labels3DModel
    from spatialdata.transformations import get_transformation

    node = sdata.labels[node_name]
    levels = _levels(node)
    if levels[0].dtype.kind not in "iu":
        raise TypeError(f"The SOM-node labels {node_name!r} have dtype {levels[0].dtype}; expected integers.")
    shapes = [tuple(level.shape) for level in levels]
    wanted = [tuple(level.shape) for level in _levels(sdata.labels[name])] if name in sdata.labels else shapes
    meta = np.empty((0,) * levels[0].ndim, dtype=lut.dtype)
    looked_up = [level.map_blocks(_lookup_block, lut=lut, dtype=lut.dtype, meta=meta) for level in levels]
    if wanted == shapes:
        return _with_levels(node, looked_up)
    if wanted == shapes[:1]:  # a single-scale element from the full resolution of a multiscale one
        full = full_resolution(node)
        model = Labels2DModel if full.ndim == 2 else Labels3DModel
        transformations = dict(get_transformation(node, get_all=True))
        return model.parse(looked_up[0], dims=full.dims, transformations=transformations)
    raise ValueError(
        f"The labels {name!r} have levels of shapes {wanted}, the SOM-node labels {node_name!r} {shapes}; the "
        "relabelled levels are lookups of the node levels: write the node labels with the same scale factors."
    )


def _check_not_backing(sdata, root: Path, outputs) -> None:
    """Raise if an element of sdata other than the outputs reads its data from an output's folder in the store.

    After the swap, such an element would read the new element's files with the old element's metadata (as
    ``SpatialData.delete_element_from_disk`` refuses, for the same reason).
    """
    from spatialdata import get_dask_backing_files

    folders = {name: (root / "labels" / name).resolve() for name in outputs}
    for _, name, element in sdata.gen_spatial_elements():
        if name in folders:
            continue
        for file in get_dask_backing_files(element):
            clash = next((out for out, folder in folders.items() if Path(file).is_relative_to(folder)), None)
            if clash is not None:
                raise ValueError(
                    f"Element {name!r} of sdata reads its data from {file}, the folder of the labels element "
                    f"{clash!r} that this call would replace; choose another output name, or compute {name!r} into "
                    "memory (or write it under its own name) first."
                )


def _check_block(block, expected):
    """Return the computed block of a label stack; raise if it has another dtype than the stack declares."""
    if block.dtype != expected:
        raise TypeError(
            f"A computed block of a label stack has dtype {block.dtype}, but the stack declares {expected}; the "
            "labels would be cast silently. Make the labelling return the declared dtype."
        )
    return block


def _parse_labels(sdata, image_names, stacks, scale_factors) -> list:
    """Parse the two layers of every stack as labels elements (lazy), with the image's transformations."""
    import dask.array as da
    from spatialdata.models import Labels2DModel, Labels3DModel
    from spatialdata.transformations import get_transformation

    elements = []
    for image_name, stack in zip(image_names, stacks, strict=True):
        data = da.asarray(stack.data)
        meta = np.empty((0,) * data.ndim, dtype=data.dtype)
        data = data.map_blocks(_check_block, expected=data.dtype, dtype=data.dtype, meta=meta)
        model = Labels2DModel if stack.ndim == 3 else Labels3DModel
        transformations = get_transformation(sdata.images[image_name], get_all=True)
        nodes = model.parse(
            data[0], dims=stack.dims[1:], transformations=dict(transformations), scale_factors=scale_factors
        )
        if scale_factors is None:
            # The metacluster layer is parsed as the node layer was (7 ms per parse, in xarray-dataclass): a copy with
            # its data, attributes deep-copied.
            metaclusters = nodes.copy(data=data[1])
        else:  # its pyramid is its own
            metaclusters = model.parse(
                data[1], dims=stack.dims[1:], transformations=dict(transformations), scale_factors=scale_factors
            )
        elements += [nodes, metaclusters]
    return elements


def _levels(element) -> list:
    """Return the dask arrays of a labels element, full resolution first (as spatialdata writes them: s0, s1...)."""
    if isinstance(element, xr.DataArray):
        return [element.data]
    return [next(iter(element[scale].ds.data_vars.values())).data for scale in element]


def _with_levels(element, arrays):
    """Return a copy of a labels element whose levels hold ``arrays`` (same shapes) instead of its data."""
    if isinstance(element, xr.DataArray):
        return element.copy(data=arrays[0])
    nodes = {"/": xr.Dataset(attrs=element.attrs)}
    for scale, array in zip(element, arrays, strict=True):
        dataset = element[scale].to_dataset()
        nodes[scale] = dataset.copy(data={next(iter(dataset.data_vars)): array})
    return xr.DataTree.from_dict(nodes)


def _put_labels(sdata, names, elements, records) -> None:
    """Put the elements into ``sdata.labels``, each with its record (if any) in its ``.attrs``, and no other."""
    for name, element in zip(names, elements, strict=True):
        element.attrs.pop(ATTRS_KEY, None)  # one inherited from the element it was computed from
        if name in records:
            element.attrs[ATTRS_KEY] = copy.deepcopy(records[name])
        if name in sdata:
            del sdata[name]
        sdata.labels[name] = element


# ---------------------------------------------------------------------------------------------------------------------
# writing


def _write_labels(sdata, names, elements, records, *, compressor=None) -> None:
    """Write lazy labels elements (and their records) in one computation: persisted in memory, or into the store.

    The one writer of :func:`write_label_stacks` and :func:`relabel_metaclusters`, for any list of labels elements
    with valid, distinct names: for a backed ``sdata``, the protocol of the module docstring, with ``compressor``
    for the arrays (None: spatialdata's default).
    """
    root = _store_root(sdata)
    if root is not None:
        _write_backed(sdata, root, names, elements, records, compressor)
        return
    levels = [level for element in elements for level in _levels(element)]
    persisted = _compute(levels, persist=True)
    computed, start = [], 0
    for element in elements:
        n = len(_levels(element))
        computed.append(_with_levels(element, persisted[start : start + n]))
        start += n
    _put_labels(sdata, names, computed, records)


# ---------------------------------------------------------------------------------------------------------------------
# computing


def _compute(collections, persist=False) -> list:
    """``dask.compute`` (or ``persist``) of all collections at once, on the configured scheduler.

    On the default threaded scheduler, an own thread pool: dask's shared pool keeps running the tasks of a failed
    computation after ``compute`` raised, and ours write into the staging folder; this pool is waited for.
    """
    import dask
    from dask.system import CPU_COUNT

    from pixelflowsom._schedulers import THREADS, active_scheduler

    run = dask.persist if persist else dask.compute
    scheduler = active_scheduler()
    if scheduler not in (None, THREADS):
        return list(run(*collections, scheduler=scheduler))
    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT)
    try:
        return list(run(*collections, scheduler=THREADS, pool=pool))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------------------
# the store


def _store_root(sdata) -> Path | None:
    return None if sdata.path is None else Path(sdata.path)


def _check_store_format(root: Path) -> None:
    if (root / "zarr.json").is_file():
        return
    if (root / ".zgroup").is_file():
        raise ValueError(
            f"sdata is backed by {root}, a store in the legacy zarr v2 SpatialData format, which pixelflowsom does not "
            "write into; write sdata to a new store first (sdata.write(new_path)) and read it from there."
        )
    raise ValueError(f"sdata is backed by {root}, which is not a local zarr v3 store (no {root / 'zarr.json'}).")


def _kind_on_disk(root: Path, name: str) -> str | None:
    return next((kind for kind in _ELEMENT_TYPES if (root / kind / name).is_dir()), None)


def _has_consolidated(root: Path) -> bool:
    import zarr

    return zarr.open_group(str(root), mode="r").metadata.consolidated_metadata is not None


def _write_backed(sdata, root: Path, names, elements, records, compressor=None) -> None:
    """Stage, compute, swap, read back (the protocol of the module docstring)."""
    remove_leftovers(root)
    consolidated = _has_consolidated(root)
    staging = root / f"{STAGING_PREFIX}{secrets.token_hex(8)}-{'c' if consolidated else 'n'}"
    try:
        staging.mkdir()
        _stage_and_compute(staging, names, elements, records, compressor)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swapped = []
    try:
        _swap(sdata, root, staging, names, consolidated, swapped)
    except BaseException:
        # Every name holds its old or its new element; sdata must read the new ones where they are, and the next
        # call would remove the staging folder (and restore the consolidated metadata) anyway: try it now.
        with suppress(Exception):
            _put_labels(sdata, swapped, _read_labels(root, swapped), records)
            remove_leftovers(root)
        raise
    _put_labels(sdata, names, _read_labels(root, names), records)


def _stage_and_compute(staging: Path, names, elements, records, compressor) -> None:
    """Write every element's metadata into the staging folder, then all their pixels in one dask computation."""
    import dask
    import dask.array as da
    import dask.local
    import zarr

    # The stand-ins' zero chunks are computed synchronously: not worth a round trip to a cluster. Elements are staged
    # by a few threads at once: each mostly waits for about 20 metadata operations of zarr's event loop (the 64
    # elements of 32 FOVs: 1.7 s one by one, 1.0 s on 8 threads; in dask tasks beside the computation, 2.3 s).
    # zarr writes the stand-ins' zero chunks instead of comparing them with the fill value, which takes longer (about
    # 2 ms per 1024^2 uint8 chunk: as long as reading it) than compressing and writing them; _stage removes them.
    # zarr's configuration is global: set here, once, not in the staging threads.
    folders = [staging / str(i) for i in range(len(names))]
    stage = functools.partial(_stage, records=records, compressor=compressor)
    with (
        dask.config.set(scheduler=dask.local.get_sync),
        zarr.config.set({"array.write_empty_chunks": True}),
        warnings.catch_warnings(),
        ThreadPoolExecutor(_METADATA_THREADS) as pool,
    ):
        # ome-zarr passes a compressor on to zarr as the deprecated `compressor` argument (zarr turns it into the
        # `compressors` of zarr v3 arrays).
        warnings.filterwarnings("ignore", message="The `compressor` argument is deprecated")
        arrays = list(pool.map(stage, folders, names, elements))
    sources, targets = [], []
    for element, element_arrays in zip(elements, arrays, strict=True):
        for level, target in zip(_levels(element), element_arrays, strict=True):
            sources.append(level.rechunk(target.chunks))
            targets.append(target)
    _compute([da.store(sources, targets, lock=False, compute=False)])


def _stage(folder: Path, name: str, element, records, compressor) -> list:
    """Write the metadata and (empty) arrays of a labels element as ``folder/labels/name``; return its zarr arrays.

    spatialdata's raster writer (what ``SpatialData.write_element`` calls) writes the metadata, from an all-zero
    stand-in with the element's chunks and transformations, whose chunks are then removed. The stand-in of a
    single-scale element is one chunk, its array then resized to the element's shape (zarr rewrites the ``shape`` of
    its ``zarr.json``, nothing else): a full-size stand-in costs about half a read of the element (1 ms a chunk). A
    multiscale stand-in has the element's shapes, as the pyramid's scales in the metadata are their ratios. The public
    ``write_element`` cannot be used: it writes only to ``sdata.path/labels/name``, computes the pixels itself (one
    computation per element), and lists the whole store and walks every element's dask graph for each element it
    writes. The element's record (if any) is added to the attributes spatialdata wrote into its group (``ome``,
    ``spatialdata_attrs``), under :data:`ATTRS_KEY`. ``compressor`` (None: spatialdata's default) is passed on to
    the writer. The returned arrays write every chunk, also one of zeros (zarr's ``write_empty_chunks``): comparing
    each chunk with the fill value first would take as long as reading it.
    """
    import dask.array as da
    import zarr

    from pixelflowsom._spatialdata_compat import write_labels

    levels = _levels(element)
    if isinstance(element, xr.DataArray):
        chunk = levels[0].chunksize
        stand_in = element.isel(dict(zip(element.dims, (slice(0, n) for n in chunk), strict=True)))
        stand_in = stand_in.copy(data=da.zeros(chunk, dtype=levels[0].dtype, chunks=chunk))
    else:
        stand_in = _with_levels(element, [da.zeros(a.shape, dtype=a.dtype, chunks=a.chunks) for a in levels])
    group = zarr.open_group(str(folder), mode="w-", zarr_format=3)
    options = None if compressor is None else {"compressor": compressor}
    write_labels(stand_in, group=group, name=name, storage_options=options)
    element_folder = folder / "labels" / name
    element_group = zarr.open_group(str(element_folder), mode="r+")
    if name in records:
        element_group.update_attributes({ATTRS_KEY: records[name]})
    attrs = element_group.attrs.asdict()
    datasets = attrs.get("ome", attrs)["multiscales"][0]["datasets"]
    arrays = []
    for dataset in datasets:
        array_folder = element_folder / dataset["path"]
        for entry in os.scandir(array_folder):  # the stand-in's chunks: every entry but the array's zarr.json
            if entry.name != "zarr.json":
                (shutil.rmtree if entry.is_dir(follow_symlinks=False) else os.unlink)(entry.path)
        array = zarr.open_array(str(array_folder), mode="r+")
        arrays.append(array.with_config({"write_empty_chunks": True}))
    if isinstance(element, xr.DataArray):
        arrays[0].resize(levels[0].shape)
    shapes = [tuple(a.shape) for a in arrays]
    if shapes != [tuple(a.shape) for a in levels]:
        raise RuntimeError(f"spatialdata wrote levels of shapes {shapes} for the labels {name!r}; expected otherwise.")
    return arrays


def _swap(sdata, root: Path, staging: Path, names, consolidated: bool, swapped: list) -> None:
    """Run steps 3 to 8 of the protocol: move the staged elements into ``root/labels``.

    Each name is appended to ``swapped`` once its folder holds the new element.
    """
    import zarr

    if consolidated:
        _drop_consolidated(root)
    labels = root / "labels"
    if not (labels / "zarr.json").is_file():
        zarr.open_group(str(root), mode="r+", use_consolidated=False).require_group("labels")
    for i, name in enumerate(names):
        new, target = staging / str(i) / "labels" / name, labels / name
        if os.path.lexists(target):
            _replace(new, target, aside=staging / str(i) / "old" / name)
        else:
            os.rename(new, target)
        swapped.append(name)
    _list_labels(labels, names)
    if consolidated:
        sdata.write_consolidated_metadata()
    shutil.rmtree(staging)


def _drop_consolidated(root: Path) -> None:
    """Rewrite the root ``zarr.json`` without consolidated metadata (one atomic write of zarr's ``LocalStore``).

    zarr has no call that removes consolidated metadata; a group opened without it saves its metadata without it.
    """
    import zarr

    zarr.open_group(str(root), mode="r+", use_consolidated=False).update_attributes({})


def _consolidate(root: Path) -> None:
    """Consolidate the store's metadata as ``SpatialData.write_consolidated_metadata`` does, from a bare path."""
    import zarr

    with warnings.catch_warnings():
        # zarr warns about every folder that is no zarr node (a staging folder) and that consolidated metadata is
        # not in the zarr v3 spec; spatialdata silences the same warnings.
        warnings.filterwarnings("ignore", category=zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(zarr.open_group(str(root), mode="r+", use_consolidated=False).store)


def _list_labels(labels: Path, names) -> None:
    """Add the names missing from the labels group's NGFF ``ome.labels`` list (as ome-zarr's writer appends them)."""
    import zarr

    group = zarr.open_group(str(labels), mode="r+", use_consolidated=False)
    ome = dict(group.attrs.get("ome", {}))
    listed = list(ome.get("labels", []))
    missing = [name for name in names if name not in listed]
    if missing:
        group.update_attributes({"ome": {**ome, "labels": listed + missing}})


def _read_labels(root: Path, names) -> list:
    """Read labels elements lazily from the store, each from its own folder (not the whole labels group).

    ``spatialdata.read_zarr`` can select element types only, so it would read every labels element of the store;
    this calls the reader it calls for one raster element, with the format it would pick.
    """
    if not names:
        return []
    import zarr

    from pixelflowsom._spatialdata_compat import read_labels_element

    version = zarr.open_group(str(root), mode="r", use_consolidated=False).attrs.get("spatialdata_attrs", {})
    version = version.get("version", "0.1")

    def read(name):
        return read_labels_element(root / "labels" / name, version)

    with ThreadPoolExecutor(_METADATA_THREADS) as pool:  # see _stage_and_compute
        return list(pool.map(read, names))


# ---------------------------------------------------------------------------------------------------------------------
# renames


class _NoExchange(OSError):
    """The platform or filesystem cannot exchange two paths atomically."""


_AT_FDCWD = -100  # linux/fcntl.h
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS stdio.h


@functools.cache
def _exchange_call():
    """Return the libc call that exchanges two paths atomically (``renameat2`` or ``renamex_np``), or None."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "renameat2", None)  # glibc >= 2.28
        if call is not None:
            call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            return lambda a, b: call(_AT_FDCWD, a, _AT_FDCWD, b, _RENAME_EXCHANGE)
    elif sys.platform == "darwin":
        libc = ctypes.CDLL(None, use_errno=True)
        call = getattr(libc, "renamex_np", None)
        if call is not None:
            call.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            return lambda a, b: call(a, b, _RENAME_SWAP)
    return None


def _exchange(a: Path, b: Path) -> None:
    """Exchange two existing paths in one atomic syscall; raise :class:`_NoExchange` if that is not possible."""
    call = _exchange_call()
    if call is None:
        raise _NoExchange(errno.ENOSYS, "no atomic exchange of paths on this platform", str(a), None, str(b))
    if call(os.fsencode(a), os.fsencode(b)) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise _NoExchange(code, os.strerror(code), str(a), None, str(b))
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace(new: Path, target: Path, aside: Path) -> None:
    """Put ``new`` at ``target``; the old ``target`` ends in the staging folder (at ``new``, or at ``aside``)."""
    try:
        _exchange(new, target)
    except _NoExchange:
        # Two renames: a process killed between them leaves target empty; remove_leftovers renames aside back.
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, aside)
        os.rename(new, target)


def _restore_aside(root: Path, staging: Path) -> None:
    """Rename back the old elements a killed two-rename swap left aside in ``staging``, where their name is empty."""
    for aside in sorted(staging.glob("*/old/*")):
        target = root / "labels" / aside.name
        if not os.path.lexists(target):
            os.rename(aside, target)
