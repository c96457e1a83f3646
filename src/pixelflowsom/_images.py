"""Images as estimator input: recognising them, checking their dims, finding their channels by label.

An image is an :class:`xarray.DataArray` with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")`` (numpy- or
dask-backed), exactly a spatialdata image element; a multiscale element (an :class:`xarray.DataTree` with
``scale0``, ``scale1``, ...) stands for its full-resolution scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

#: Spatial dims by number of spatial axes.
SPATIAL_DIMS = {2: ("y", "x"), 3: ("z", "y", "x")}
_KNOWN_DIMS = {"c", "z", "y", "x"}


def _is_single_image(X) -> bool:
    return isinstance(X, xr.DataArray | xr.DataTree)


def is_image_input(X) -> bool:
    """Tell whether ``X`` is an image or a non-empty list/tuple of images."""
    if _is_single_image(X):
        return True
    return isinstance(X, Sequence) and not isinstance(X, str) and len(X) > 0 and all(map(_is_single_image, X))


def full_resolution(image):
    """Return the DataArray of an image element: itself, or the ``scale0`` level of a multiscale ``DataTree``."""
    if isinstance(image, xr.DataTree):
        scales = sorted(image.children)
        if not scales:
            raise ValueError("The multiscale image (DataTree) has no scales; expected children 'scale0', ...")
        node = image["scale0"] if "scale0" in image.children else image[scales[0]]
        arrays = list(node.ds.data_vars.values())
        if len(arrays) != 1:
            raise ValueError(
                f"The multiscale image's full-resolution scale holds {len(arrays)} arrays, expected exactly one."
            )
        return arrays[0]
    return image


def image_name(image, position: int) -> str:
    """Name an image in messages: its ``name`` if it has one, else its position in the list."""
    name = getattr(image, "name", None)
    return repr(name) if isinstance(name, str) and name else f"at position {position}"


def check_image(image, position: int) -> xr.DataArray:
    """Validate one image's dims and dtype; return it with dims in canonical order (lazily transposed)."""
    image = full_resolution(image)
    name = image_name(image, position)
    dims = tuple(image.dims)
    unknown = [d for d in dims if d not in _KNOWN_DIMS]
    if unknown or "c" not in dims or len(set(dims)) != len(dims) or len(dims) not in (3, 4):
        problem = f"unknown dims {unknown}" if unknown else "a 'c' (channel) dim is missing" if "c" not in dims else ""
        raise ValueError(
            f"Image {name} has dims {dims}{': ' + problem if problem else ''}; expected ('c', 'y', 'x') or "
            "('c', 'z', 'y', 'x'). Rename or transpose its dims, e.g. image.rename({'channel': 'c'})."
        )
    canonical = ("c", *SPATIAL_DIMS[len(dims) - 1])
    if set(dims) != set(canonical):
        raise ValueError(f"Image {name} has dims {dims}; a 3D image needs 'z', 'y' and 'x', a 2D one 'y' and 'x'.")
    if image.dtype.kind not in "biuf":
        raise TypeError(f"Image {name} has dtype {image.dtype}; expected a numeric image (integer or float).")
    if min(image.shape) < 1:
        raise ValueError(f"Image {name} is empty: shape {dict(zip(image.dims, image.shape, strict=True))}.")
    return image.transpose(*canonical) if dims != canonical else image


def check_images(X) -> tuple[list[xr.DataArray], bool]:
    """Validate image input (one image or a list of them) before any pixel is read.

    Returns
    -------
    images : list of xarray.DataArray
        Every image checked by :func:`check_image` (full resolution, dims in canonical order).
    single : bool
        Whether ``X`` was one image rather than a list.

    Raises
    ------
    ValueError, TypeError
        From :func:`check_image`, or when the images do not all have the same dims.
    """
    single = _is_single_image(X)
    images = [check_image(image, i) for i, image in enumerate([X] if single else X)]
    if len({image.ndim for image in images}) > 1:
        described = ", ".join(f"{image_name(im, i)}: {im.dims}" for i, im in enumerate(images))
        raise ValueError(
            f"All images must have the same dims, 2D ('c', 'y', 'x') or 3D ('c', 'z', 'y', 'x'); got {described}. "
            "Cluster 2D and 3D images separately."
        )
    return images, single


def channel_list(channels) -> list:
    """Normalise the ``channels`` parameter (one label or several) to a list of labels."""
    if isinstance(channels, str | int | np.integer):
        return [_key(channels)]
    return [_key(c) for c in channels]


def resolve_channels(channels, image: xr.DataArray) -> list:
    """Return the channel labels to cluster on: ``channels`` as a list, or all of ``image``'s for ``None``.

    Raises
    ------
    ValueError
        If no channel is named, or one is named twice.
    """
    labels = channel_labels(image) if channels is None else channel_list(channels)
    if len(labels) == 0 or len({str(c) for c in labels}) != len(labels):
        raise ValueError(f"channels={channels!r} must name at least one channel, each once.")
    return labels


def channel_positions(image: xr.DataArray, channels: list, position: int) -> np.ndarray:
    """Positions along ``c`` of ``channels``, found by the labels of the ``c`` coordinate as ``image.sel`` does.

    ``position`` is the image's place in the caller's list (for the message).

    Raises
    ------
    KeyError
        Naming the missing channels and listing the available ones.
    """
    available = list(image.coords["c"].values) if "c" in image.coords else list(range(image.sizes["c"]))
    lookup = {_key(c): i for i, c in enumerate(available)}
    missing = [c for c in channels if _key(c) not in lookup]
    if missing:
        raise KeyError(
            f"Channel(s) {missing} not found in image {image_name(image, position)}; available channels: "
            f"{available}. Pass channels that every image has."
        )
    return np.array([lookup[_key(c)] for c in channels], dtype=np.int64)


def _key(label):
    """Compare channel labels as ``sel`` does: numpy scalars and Python scalars alike."""
    return label.item() if isinstance(label, np.generic) else label


def channel_labels(image: xr.DataArray) -> list:
    """Return the labels of an image's ``c`` coordinate (positions when it has none)."""
    if "c" in image.coords:
        return [_key(c) for c in image.coords["c"].values]
    return list(range(image.sizes["c"]))
