"""Read multiplexed images from TIFF, OME-TIFF, folders of per-channel TIFFs, .npz and .npy files into a new store.

:func:`read_image` reads one file (or folder) as a lazy ``(c, y, x)`` :class:`xarray.DataArray` with channel names;
:func:`import_images` writes several of them as image elements of a new SpatialData zarr store, which the estimator
and the command line then cluster. Supported inputs:

- a TIFF or OME-TIFF (``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``) holding a ``(c, y, x)`` stack, a ``(y, x, c)``
  (samples-last, RGB-like) stack or one ``(y, x)`` channel. Channel names come from the OME-XML
  (``Pixels/Channel/@Name``), else from ImageJ's ``Labels``, else from every page's ``PageName`` tag; a plain TIFF has
  none. Of a pyramid the full resolution is read. Files with several image series, or with a stack along z, time or
  another non-channel axis, are refused;
- a folder of single-channel TIFFs (the ark-analysis / MIBI layout ``fov1/CD45.tiff``, ``fov1/CD3.tif``, ...): the
  channel names are the file names without suffix, the channels are sorted by name (Python's string order); other
  files, hidden files (``._CD3.tiff``) and subfolders are ignored;
- an ``.npz`` archive holding ``channels`` (the names, optional) and exactly one other array, the image
  ``(c, y, x)`` or ``(y, x)`` (e.g. ``img0``);
- an ``.npy`` array ``(c, y, x)`` or ``(y, x)``, without channel names.

Reading is lazy (dask): a TIFF is read tile by tile (or strip by strip) through tifffile's zarr interface, an
``.npy`` through a memory map, an ``.npz`` image (a compressed archive member, which cannot be read in parts) at once
when it is computed; so :func:`import_images` holds one ``.npz`` image at a time, and TIFF and ``.npy`` images larger
than memory go through chunk by chunk. The lazy arrays hold only the file's path, so they run on any dask scheduler
(threads, processes, distributed): each process opens the file itself.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["import_images", "read_image"]

#: The suffixes :func:`read_image` reads (case-insensitive), besides folders of single-channel TIFFs.
SUPPORTED_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".npz", ".npy")
_TIFF_SUFFIXES = (".tif", ".tiff")
#: tifffile's axis codes read as the channel axis: channel, sample (RGB-like), generic image sequence, unknown.
_CHANNEL_AXES = "CSIQ"
#: Spatial size of the chunks in which a file is read (rounded to a multiple of its own tiles or strips).
_READ_SIDE = 1024
#: Upper bound on the bytes of one chunk of an imported element (see :func:`import_images`).
_CHUNK_BYTES = 64 * 2**20


# ---------------------------------------------------------------------------------------------------------------------
# reading one file


def read_image(path, *, channels=None) -> xr.DataArray:
    """Read a multiplexed image file, or a folder of single-channel TIFFs, as a lazy ``(c, y, x)`` DataArray.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.tif``/``.tiff``/``.ome.tif``/``.ome.tiff``, ``.npz`` or ``.npy`` file, or a folder of single-channel
        TIFFs (see the module's documentation for what each holds).
    channels : sequence of str, optional
        The channel names, in the file's channel order (of a folder: its files sorted by name): they name the
        channels of a file that has no names, and replace the names a file has. ``None`` (default) takes the file's
        names; a file without names then gets ``"0"``, ``"1"``, ... (its channel positions as str), so that files
        with the same channel order still match by name when clustered together. An OME-TIFF that names only some
        channels gets position names for the rest.

    Returns
    -------
    xarray.DataArray
        Dask-backed, dims ``("c", "y", "x")`` (a ``(y, x)`` file is one channel, a ``(y, x, c)`` TIFF is transposed),
        the file's dtype in native byte order, coordinate ``c`` the channel names (str), ``name`` a valid spatialdata
        element name made from the file's name without suffix (or the folder's name): every character other than a
        letter, digit, ``_``, ``-`` or ``.`` becomes ``_``, leading ``.`` and ``_`` are dropped (``"image"`` if
        nothing is left).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The suffix is not supported; the file cannot be read; the image does not have 2 or 3 dims (or, for a TIFF, a
        channel axis); it is empty; ``channels`` names another number of channels than the file has; the channel
        names are not distinct; an ``.npz`` does not hold exactly one image array, or stores its names as pickled
        objects; a folder holds no TIFF, or a TIFF with several channels, or TIFFs of different shapes.
    TypeError
        ``channels`` is not a sequence of str, or the image is not numeric.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pixelflowsom import read_image
    >>> path = Path(tempfile.mkdtemp()) / "fov 1.npz"
    >>> np.savez(path, channels=np.array(["CD45", "CD3"]), img0=np.zeros((2, 4, 5), np.uint16))
    >>> image = read_image(path)
    >>> image.name, image.dims, image.shape, list(image.c.values)
    ('fov_1', ('c', 'y', 'x'), (2, 4, 5), ['CD45', 'CD3'])
    """
    given = _check_channel_names_param(channels, "channels")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Image file or folder {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        data, names, name = _read_folder(path)
    else:
        suffix = _suffix(path)
        if suffix is None:
            raise ValueError(
                f"Cannot read {str(path)!r}: unsupported file type {path.suffix or '(no suffix)'!r}; supported are "
                f"{', '.join(SUPPORTED_SUFFIXES)} files and folders of single-channel TIFFs."
            )
        name = path.name[: -len(suffix)]
        if suffix in _TIFF_SUFFIXES or suffix.startswith(".ome."):
            data, names = _read_tiff(path)
        elif suffix == ".npz":
            data, names = _read_npz(path)
        else:
            data, names = _read_npy(path)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"Image {str(path)!r} has dtype {data.dtype}; expected a numeric image (integer or float).")
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    if min(data.shape) < 1:
        raise ValueError(f"Image {str(path)!r} is empty: shape (c, y, x) = {data.shape}.")
    n = data.shape[0]
    if given is not None:
        if len(given) != n:
            raise ValueError(
                f"channels names {len(given)} channel(s) but {str(path)!r} has {n}; pass {n} names, one per channel "
                "in the file's order (on the command line: --channel-names)."
            )
        names = given
    elif names is None:
        names = [str(i) for i in range(n)]
    _check_distinct_channels(names, path)
    return xr.DataArray(
        data,
        dims=("c", "y", "x"),
        coords={"c": np.array(names, dtype=object)},
        name=_element_name(name),
    )


def _suffix(path: Path) -> str | None:
    """Return the supported suffix ``path``'s name ends with (lower case, ``.ome.tif[f]`` as a whole), or None."""
    lower = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


def _element_name(stem: str) -> str:
    """Make a valid spatialdata element name from ``stem`` (see :func:`read_image`)."""
    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in stem).lstrip("._")
    return name or "image"


def _check_channel_names_param(channels, what: str) -> list[str] | None:
    """``channels`` as a list of str (None for None); raise TypeError/ValueError for anything else."""
    if channels is None:
        return None
    if isinstance(channels, str | bytes) or not isinstance(channels, Sequence | np.ndarray):
        raise TypeError(
            f"{what}={channels!r} must be a list of channel names (str), e.g. {what}=['CD45', 'CD3'], not a "
            f"{type(channels).__name__}."
        )
    names = []
    for c in channels:
        if isinstance(c, np.str_):
            c = str(c)
        if not isinstance(c, str):
            raise TypeError(f"{what} must hold str channel names; got {c!r} ({type(c).__name__}). Pass names as str.")
        if not c:
            raise ValueError(f"{what} holds an empty channel name; every channel needs a non-empty name.")
        names.append(c)
    return names


def _check_distinct_channels(names: list[str], path: Path) -> None:
    seen, repeated = set(), []
    for c in names:
        if c in seen and c not in repeated:
            repeated.append(c)
        seen.add(c)
    if repeated:
        raise ValueError(
            f"Image {str(path)!r} has repeated channel name(s) {repeated} among {names}; every channel needs its own "
            "name: pass channels=[...] with distinct names (on the command line: --channel-names)."
        )


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


class _FileArray:
    """The array of one TIFF (series 0, full resolution) or ``.npy`` file, read region by region when indexed.

    Made for :func:`dask.array.from_array`: it has ``shape``, ``dtype``, ``ndim`` and ``__getitem__``, which opens
    the file, reads the region and closes the file (so that importing thousands of files never holds thousands of
    them open). It holds no open file, so it pickles as its path and tasks run on any dask scheduler; its dask token
    includes the file's modification time and size.
    """

    def __init__(self, path: Path, kind: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.kind, self.shape, self.dtype = str(path), kind, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.stamp = _file_stamp(path)

    def __getitem__(self, index):
        if self.kind == "tiff":
            import tifffile
            import zarr

            with tifffile.imread(self.path, aszarr=True, series=0, level=0) as store:
                array = zarr.open_array(store, mode="r")
                self._check(array)
                return np.asarray(array[index])
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self._check(array)
        return np.array(array[index])  # read now, not a view of the memory map

    def _check(self, array) -> None:
        if tuple(array.shape) != self.shape or np.dtype(array.dtype) != self.dtype:
            raise ValueError(
                f"{self.path!r} changed while being imported: it now holds {array.dtype} {tuple(array.shape)}, not "
                f"{self.dtype} {self.shape}; import it again."
            )

    def __dask_tokenize__(self):
        return type(self).__name__, self.path, self.kind, self.shape, self.dtype.str, self.stamp

    def to_dask(self, native_chunks, spatial_axes):
        """Return a dask array reading this file, chunks multiples of ``native_chunks`` near :data:`_READ_SIDE`."""
        import dask.array as da
        from dask.base import tokenize

        chunks = tuple(
            max(native, _READ_SIDE // native * native) if axis in spatial_axes else native
            for axis, native in enumerate(native_chunks)
        )
        return da.from_array(
            self,
            chunks=chunks,
            name=f"pixelflowsom-read-{tokenize(self)}",
            asarray=False,
            fancy=False,
            lock=False,
            meta=np.empty((0,) * self.ndim, dtype=self.dtype),
        )


def _read_tiff(path: Path):
    """Return ``(data, names)`` of a TIFF: a dask array ``(c, y, x)`` and its channel names (None if unnamed)."""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series
            if len(series) != 1:
                described = ", ".join(f"{s.axes} {tuple(s.shape)}" for s in series) or "none"
                raise ValueError(
                    f"TIFF {str(path)!r} holds {len(series)} image series ({described}); pixelflowsom imports files "
                    "with exactly one (c, y, x) image: save each image to its own file."
                )
            axes, shape, dtype = series[0].axes, tuple(series[0].shape), series[0].dtype
            order = _tiff_axis_order(path, axes, shape)
            n = shape[order[0]] if order[0] is not None else 1
            names = _tiff_channel_names(tif, series[0], n)
            _check_decodable(path, series[0].keyframe)
            native = zarr.open_array(series[0].aszarr(level=0), mode="r").chunks  # its tiles, strips or pages
    except (tifffile.TiffFileError, OSError, KeyError, IndexError, NotImplementedError) as err:
        raise ValueError(f"Cannot read TIFF {str(path)!r}: {err}") from None
    data = _FileArray(path, "tiff", shape, dtype).to_dask(native, {axes.index("Y"), axes.index("X")})
    if order[0] is None:
        return data[None], names
    return data.transpose(order), names


def _check_decodable(path: Path, page) -> None:
    """Raise a ValueError now, not while writing, if tifffile lacks the codec of the TIFF's compression."""
    from tifffile import TIFF

    if page.compression == 1:  # uncompressed
        return
    try:
        TIFF.DECOMPRESSORS[page.compression]
    except KeyError as err:
        raise ValueError(
            f"Cannot decode TIFF {str(path)!r} ({err.args[0]}); install the codecs (pip install imagecodecs) or save "
            "the image uncompressed."
        ) from None


def _tiff_axis_order(path: Path, axes: str, shape) -> tuple:
    """Positions of the (channel, Y, X) axes in tifffile's ``axes`` (channel None for a ``YX`` image)."""
    if "Y" in axes and "X" in axes and len(axes) == 2:
        return None, axes.index("Y"), axes.index("X")
    others = [a for a in axes if a not in "YX"]
    if "Y" in axes and "X" in axes and len(axes) == 3 and others[0] in _CHANNEL_AXES:
        return axes.index(others[0]), axes.index("Y"), axes.index("X")
    raise ValueError(
        f"TIFF {str(path)!r} has axes {axes!r} of shape {tuple(shape)}; pixelflowsom imports one channel stack "
        "(c, y, x) or (y, x, c), or one (y, x) channel, not a stack along z, time or other axes. If the stack holds "
        "channels, save it as (c, y, x), e.g. np.save('image.npy', tifffile.imread(file)) after reordering the axes."
    )


def _tiff_channel_names(tif, series, n: int) -> list[str] | None:
    """Return the channel names a TIFF stores: OME-XML ``Channel/@Name``, ImageJ ``Labels`` or ``PageName`` tags."""
    if tif.is_ome and tif.ome_metadata:
        names = _ome_channel_names(tif.ome_metadata)
        if names is not None and len(names) == n and any(names):
            return [name or str(i) for i, name in enumerate(names)]
    if tif.is_imagej:
        labels = (tif.imagej_metadata or {}).get("Labels")
        if isinstance(labels, list | tuple) and len(labels) == n and all(isinstance(x, str) and x for x in labels):
            return list(labels)
    pages = series.pages
    if n > 1 and len(pages) == n and all(hasattr(page, "tags") for page in pages):
        names = [page.tags.valueof(285) for page in pages]  # PageName
        if all(isinstance(x, str) and x for x in names):
            return names
    return None


def _ome_channel_names(xml: str) -> list[str] | None:
    """``Name`` of every ``Channel`` of the first ``Image``'s ``Pixels`` in OME-XML ("" where missing)."""
    import tifffile

    try:
        ome = tifffile.xml2dict(xml, sep="")  # sep="": a name with commas stays one str
    except (ValueError, SyntaxError):  # xml.etree's ParseError is a SyntaxError
        return None
    image = ome.get("OME", {}).get("Image")
    image = image[0] if isinstance(image, list) else image
    channels = (image or {}).get("Pixels", {}).get("Channel", [])
    channels = [channels] if isinstance(channels, dict) else channels
    names = [channel.get("Name") if isinstance(channel, dict) else None for channel in channels]
    if any(name is not None and not isinstance(name, str) for name in names):
        names = _exact_ome_channel_names(xml)  # xml2dict read a name such as "1" or "01" as a number
    return [name if isinstance(name, str) else "" for name in names]


def _exact_ome_channel_names(xml: str) -> list[str | None]:
    """Return the ``Name`` attributes as written (xml2dict turns number-like values into numbers: "01" -> 1)."""
    try:
        from defusedxml import ElementTree  # as tifffile.xml2dict does
    except ImportError:
        from xml.etree import ElementTree

    root = ElementTree.fromstring(xml)

    def tag(element):
        return element.tag.rsplit("}", 1)[-1]  # without the namespace

    image = next((e for e in root if tag(e) == "Image"), None)
    pixels = next((e for e in image if tag(e) == "Pixels"), None) if image is not None else None
    if pixels is None:
        return []
    return [e.get("Name") for e in pixels if tag(e) == "Channel"]


def _read_npy(path: Path):
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"Cannot read .npy file {str(path)!r}: {err}") from None
    shape, dtype = tuple(array.shape), array.dtype
    del array
    _check_ndim(path, shape)
    if dtype.hasobject:
        raise TypeError(f"Image {str(path)!r} has dtype object; expected a numeric image (integer or float).")
    reader = _FileArray(path, "npy", shape, dtype)
    data = reader.to_dask((1,) * (len(shape) - 2) + (_READ_SIDE, _READ_SIDE), {len(shape) - 2, len(shape) - 1})
    return (data if data.ndim == 3 else data[None]), None


def _check_ndim(path: Path, shape) -> None:
    if len(shape) not in (2, 3):
        raise ValueError(
            f"Image {str(path)!r} has shape {tuple(shape)} ({len(shape)} dims); expected (c, y, x) or one channel "
            "(y, x). Save one (c, y, x) image per file."
        )


def _npz_header(zf: zipfile.ZipFile, member: str):
    """``(shape, dtype)`` from an ``.npz`` member's header, without decompressing its data (None, None if unknown)."""
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None, None
    return tuple(shape), np.dtype(dtype)


def _load_npz_member(path: str, key: str, shape, dtype):
    """Load one array of an ``.npz`` (the task of a lazy ``.npz`` image); check it is what its header said."""
    with np.load(path, allow_pickle=False) as z:
        array = z[key]
    if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
        raise ValueError(f"{path!r} changed while being imported; import it again.")
    return array


def _read_npz(path: Path):
    import dask
    import dask.array as da
    from dask.base import tokenize

    eager = None
    try:
        with zipfile.ZipFile(path) as zf:
            keys = [m[: -len(".npy")] for m in zf.namelist() if m.endswith(".npy")]
            images = [k for k in keys if k != "channels"]
            if len(images) != 1:
                raise ValueError(
                    f"{str(path)!r} holds the arrays {keys}; expected 'channels' (optional) and exactly one image "
                    "array (c, y, x) such as 'img0'. Save one image per .npz."
                )
            key = images[0]
            shape, dtype = _npz_header(zf, f"{key}.npy")
        with np.load(path, allow_pickle=False) as z:
            names = _npz_channel_names(path, z) if "channels" in keys else None
            if shape is None:  # an unusual header version: read the array now
                eager = z[key]
                shape, dtype = eager.shape, eager.dtype
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"Cannot read .npz file {str(path)!r}: {err}") from None
    _check_ndim(path, shape)
    if dtype.hasobject:
        raise TypeError(f"Image {key!r} in {str(path)!r} has dtype object; expected a numeric image.")
    if eager is not None:
        data = da.from_array(eager, chunks=-1)
    else:
        name = f"pixelflowsom-npz-{tokenize(str(path), key, _file_stamp(path))}"
        task = dask.delayed(_load_npz_member, pure=True)(str(path), key, shape, dtype.str, dask_key_name=name)
        data = da.from_delayed(task, shape=shape, dtype=dtype)
    return (data if data.ndim == 3 else data[None]), names


def _npz_channel_names(path: Path, z) -> list[str]:
    try:
        raw = z["channels"]
    except ValueError:  # object arrays need pickle, which untrusted files must not use
        raise ValueError(
            f"'channels' in {str(path)!r} is stored as Python objects (pickled), which pixelflowsom does not load; "
            "save the names as a str array, e.g. np.savez(file, channels=np.array(names, dtype=str), img0=image), or "
            "pass channels=[...] (on the command line: --channel-names)."
        ) from None
    raw = np.atleast_1d(raw)
    if raw.ndim != 1 or raw.dtype.kind not in "US":
        raise ValueError(
            f"'channels' in {str(path)!r} must be a 1-D array of str names; it has dtype {raw.dtype} and shape "
            f"{raw.shape}. Re-save it with channels=np.array(names, dtype=str), or pass channels=[...]."
        )
    return [c.decode() if isinstance(c, bytes) else str(c) for c in raw.tolist()]


def _read_folder(path: Path):
    """Return ``(data, names, element stem)`` of a folder of single-channel TIFFs."""
    import dask.array as da

    files = sorted(
        (f for f in path.iterdir() if f.is_file() and not f.name.startswith(".") and _suffix(f) in _TIFF_SUFFIXES),
        key=lambda f: _channel_stem(f),
    )
    if not files:
        subfolders = sorted(f.name for f in path.iterdir() if f.is_dir() and not f.name.startswith("."))
        hint = f" (subfolders are not searched: {subfolders}; pass the one holding the TIFFs)" if subfolders else ""
        raise ValueError(
            f"Folder {str(path)!r} holds no .tif/.tiff files{hint}; a folder is imported as one image with one "
            "single-channel TIFF per channel."
        )
    arrays, names = [], []
    for file in files:
        data, _ = _read_tiff(file)
        if data.shape[0] != 1:
            raise ValueError(
                f"{str(file)!r} in folder {str(path)!r} holds {data.shape[0]} channels; a folder must hold one "
                "single-channel TIFF per channel. Import a multi-channel TIFF as a file of its own."
            )
        arrays.append(data[0])
        names.append(_channel_stem(file))
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) > 1:
        described = ", ".join(f"{n}: {tuple(a.shape)}" for n, a in zip(names, arrays, strict=True))
        raise ValueError(
            f"The TIFFs in folder {str(path)!r} have different shapes ({described}); all channels of an image must "
            "have the same (y, x) shape."
        )
    return da.stack(arrays), names, path.absolute().name


def _channel_stem(file: Path) -> str:
    """Return a channel's name in a folder: its file name without ``.tif``/``.tiff`` or ``.ome.tif``/``.ome.tiff``."""
    lower = file.name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return file.name[: -len(suffix)]
    return file.name


# ---------------------------------------------------------------------------------------------------------------------
# writing a store


def _default_chunks(n_channels: int, itemsize: int) -> dict[str, int]:
    """Return the chunks :func:`import_images` stores an image with when given none (see there)."""
    side = next((side for side in (1024, 512) if n_channels * itemsize * side * side <= _CHUNK_BYTES), 256)
    return {"c": max(1, min(n_channels, _CHUNK_BYTES // (itemsize * side * side))), "y": side, "x": side}


def import_images(
    paths, store, *, names=None, channels=None, chunks=None, overwrite=False, overwrite_hint="pass overwrite=True"
) -> list[str]:
    """Read image files (see :func:`read_image`) and write them as the image elements of a new SpatialData store.

    Every file is read and checked, the element names and the store path too, before anything is written. The store
    is written under a temporary hidden name next to it (``.STORE.importing-<random>``) and renamed to ``store`` only
    when complete (one atomic rename), so that a killed process never leaves a half-written store under ``store``;
    after an error the temporary folder is removed (only a killed process can leave one behind: delete it). All
    channels of every file are kept: channels are chosen when clustering. The images may have different channels
    (they are separate elements).

    Parameters
    ----------
    paths : str, os.PathLike or sequence of them
        The image files (or folders of single-channel TIFFs) to import.
    store : str or os.PathLike
        Path of the SpatialData zarr store to create (e.g. ``"images.zarr"``); its parent folder must exist.
    names : sequence of str, optional
        The element names, one per path; ``None`` (default) derives them from the file names as
        :func:`read_image` does. Names must be valid spatialdata element names, must not start with ``"."``
        (``spatialdata.read_zarr`` skips such elements) and must be distinct, also regardless of case.
    channels : sequence of str, or sequence of (sequence of str or None), optional
        Channel names (see :func:`read_image`): one list for every file, or one list (or None) per file.
    chunks : int, tuple, dict or None, optional
        The stored chunks, as :meth:`spatialdata.models.Image2DModel.parse` takes them. ``None`` (default): all
        channels in one chunk (the estimator reads every channel of a pixel together), spatially 1024 x 1024, or
        512 x 512, or 256 x 256: the largest whose chunk takes at most 64 MiB (22 channels of uint16: 1024; 56
        channels of float32: 512); with so many channels that 256 x 256 exceeds 64 MiB, the channels are split too.
    overwrite : bool, default=False
        Whether to replace an existing ``store``. Only a SpatialData zarr store is replaced (a zarr group whose
        attributes hold ``spatialdata_attrs``, or holding nothing but element groups), never anything else. The old
        store is renamed to ``.STORE.replaced-<random>``, the new one renamed into place, then the old one deleted:
        between the two renames (two system calls) ``store`` does not exist, and a process killed there leaves the
        old store under that hidden name, from where it can be renamed back.
    overwrite_hint : str, default="pass overwrite=True"
        How the caller's user allows replacing the store, in the message (the command line: ``"pass --overwrite"``).

    Returns
    -------
    list of str
        The element names written, in the order of ``paths``.

    Raises
    ------
    FileNotFoundError
        An image file, or the parent folder of ``store``, does not exist.
    ValueError
        An image cannot be read (see :func:`read_image`); ``names`` or ``channels`` do not have one entry per path;
        an element name is invalid or repeated; ``store`` exists and ``overwrite`` is false, or it is not a
        SpatialData zarr store (or is a symbolic link) and ``overwrite`` is true.
    TypeError
        ``names`` or ``channels`` are not lists of str, or an image is not numeric.

    Examples
    --------
    >>> import tempfile, numpy as np, spatialdata
    >>> from pixelflowsom import import_images
    >>> folder = Path(tempfile.mkdtemp())
    >>> np.save(folder / "fov1.npy", np.zeros((2, 4, 5), np.uint16))
    >>> import_images([folder / "fov1.npy"], folder / "images.zarr", channels=["CD45", "CD3"])
    ['fov1']
    >>> spatialdata.read_zarr(folder / "images.zarr").images["fov1"].c.values.tolist()
    ['CD45', 'CD3']
    """
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel

    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not paths:
        raise ValueError("No image files given; pass at least one path.")
    given_names = _check_names_param(names, len(paths))
    per_file = _channels_per_file(channels, len(paths))
    store = Path(os.path.abspath(store))
    images = [read_image(path, channels=c) for path, c in zip(paths, per_file, strict=True)]
    element_names = given_names if given_names is not None else [image.name for image in images]
    _check_element_names(element_names, paths, given=given_names is not None)
    _check_store(store, overwrite, overwrite_hint)
    elements = {}
    for name, image in zip(element_names, images, strict=True):
        image_chunks = _default_chunks(image.shape[0], image.dtype.itemsize) if chunks is None else chunks
        elements[name] = Image2DModel.parse(
            image.data, dims=("c", "y", "x"), c_coords=[str(c) for c in image.c.values], chunks=image_chunks
        )
    _write_new_store(SpatialData(images=elements), store, overwrite)
    return list(element_names)


def _check_names_param(names, n: int) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise TypeError(f"names={names!r} must be a list of element names (str), one per path.")
    names = [str(x) if isinstance(x, np.str_) else x for x in names]
    for x in names:
        if not isinstance(x, str):
            raise TypeError(f"names must hold str element names; got {x!r} ({type(x).__name__}).")
    if len(names) != n:
        raise ValueError(f"names has {len(names)} name(s) for {n} path(s); pass one element name per path.")
    return names


def _channels_per_file(channels, n: int) -> list:
    """``channels`` as one entry (list of str or None) per file."""
    if channels is None:
        return [None] * n
    if isinstance(channels, str | bytes) or not isinstance(channels, Sequence | np.ndarray):
        return [_check_channel_names_param(channels, "channels")]  # raises the TypeError
    if all(isinstance(c, str | np.str_) for c in channels):
        return [_check_channel_names_param(channels, "channels")] * n
    if len(channels) != n:
        raise ValueError(
            f"channels has {len(channels)} entries for {n} path(s); pass one list of channel names for every file, "
            "or one list (or None) per file."
        )
    return [_check_channel_names_param(c, f"channels[{i}]") for i, c in enumerate(channels)]


def _check_element_names(names: list[str], paths, *, given: bool) -> None:
    from pixelflowsom._spatialdata_compat import check_valid_name  # spatialdata's own rule, not public

    for name in names:
        try:
            check_valid_name(name)
        except ValueError as err:
            raise ValueError(f"Element name {name!r} is not a valid spatialdata element name: {err}") from None
        if name.startswith("."):
            raise ValueError(
                f"Element name {name!r} starts with '.': spatialdata.read_zarr skips such elements; choose another."
            )
    by_key: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_key.setdefault(name.lower(), []).append(i)
    clashes = [positions for positions in by_key.values() if len(positions) > 1]
    if clashes:
        described = "; ".join(
            ", ".join(f"{names[i]!r} ({str(Path(paths[i]))!r})" for i in positions) for positions in clashes
        )
        fix = "pass distinct names" if given else "the names come from the file names; pass names=[...]"
        raise ValueError(
            f"Element names clash (spatialdata needs names distinct regardless of case): {described}; {fix} with one "
            "distinct element name per path."
        )


#: What the root of a SpatialData zarr store holds: its element groups and zarr's metadata files.
_STORE_ENTRIES = {"images", "labels", "points", "shapes", "tables", "zarr.json", ".zgroup", ".zattrs", ".zmetadata"}


def _is_spatialdata_store(path: Path) -> bool:
    """Tell whether ``path`` is a SpatialData zarr store (one that ``overwrite=True`` may replace).

    That is a zarr group (a root ``zarr.json`` or ``.zgroup``) whose attributes hold ``spatialdata_attrs`` (as
    spatialdata writes them), or which holds nothing but element groups and zarr metadata (as older versions did).
    """
    if not path.is_dir() or not ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        return False
    for meta, get in (("zarr.json", lambda d: d.get("attributes", {})), (".zattrs", lambda d: d)):
        try:
            attributes = get(json.loads((path / meta).read_text()))
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(attributes, dict) and "spatialdata_attrs" in attributes:
            return True
    return {entry.name for entry in path.iterdir()} <= _STORE_ENTRIES


def _check_store(store: Path, overwrite: bool, overwrite_hint: str) -> None:
    if not store.name:
        raise ValueError(f"Store path {str(store)!r} has no name; pass a path such as 'images.zarr'.")
    if not store.parent.is_dir():
        raise FileNotFoundError(
            f"The folder {str(store.parent)!r} of store {str(store)!r} does not exist; create it first or choose "
            "another store path."
        )
    if not (store.exists() or store.is_symlink()):
        return
    if not overwrite:
        raise ValueError(f"Store {str(store)!r} exists; choose another store path or {overwrite_hint} to replace it.")
    if store.is_symlink():
        raise ValueError(f"Store {str(store)!r} is a symbolic link; pass the path it points to, to replace that store.")
    if not _is_spatialdata_store(store):
        raise ValueError(
            f"{str(store)!r} exists and is not a SpatialData zarr store; only a SpatialData store is replaced. Choose "
            "another store path, or remove it yourself."
        )


def _write_new_store(sdata, store: Path, overwrite: bool) -> None:
    """Write ``sdata`` to a temporary sibling of ``store``, then rename it to ``store`` (see :func:`import_images`)."""
    token = secrets.token_hex(8)
    temporary = store.parent / f".{store.name}.importing-{token}"
    try:
        sdata.write(temporary, overwrite=False, update_sdata_path=False)
        if store.exists() or store.is_symlink():
            if not overwrite:  # created while this call was writing
                raise ValueError(f"Store {str(store)!r} was created while importing; choose another store path.")
            _replace(store, temporary, store.parent / f".{store.name}.replaced-{token}")
        else:
            os.rename(temporary, store)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _replace(store: Path, new: Path, backup: Path) -> None:
    """Rename ``store`` to ``backup``, ``new`` to ``store``, then delete ``backup``."""
    os.rename(store, backup)
    try:
        os.rename(new, store)
    except BaseException:
        os.rename(backup, store)
        raise
    try:
        shutil.rmtree(backup)
    except OSError as err:
        warnings.warn(
            f"The new store is in place at {str(store)!r}, but the old one could not be deleted from "
            f"{str(backup)!r} ({err}); delete it yourself.",
            RuntimeWarning,
            stacklevel=3,
        )
