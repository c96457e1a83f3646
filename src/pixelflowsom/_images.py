"""Images as estimator input: recognising them, checking their dims, finding their channels by label.

An image is an :class:`xarray.DataArray` with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")`` (numpy- or
dask-backed), exactly a spatialdata image element; a multiscale element (an :class:`xarray.DataTree` with
``scale0``, ``scale1``, ...) stands for its full-resolution scale.
"""

from __future__ import annotations

import difflib
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
        return [plain(channels)]
    return [plain(c) for c in channels]


def resolve_channels(channels, image: xr.DataArray) -> list:
    """Return the channel labels to cluster on: ``channels`` as a list, or all of ``image``'s for ``None``.

    Raises
    ------
    ValueError
        If no channel is named, or one is named twice.
    """
    labels = channel_labels(image) if channels is None else channel_list(channels)
    if len(labels) == 0 or len({str(c) for c in labels}) != len(labels):
        raise ValueError(f"channels={labels!r} must name at least one channel, each once.")
    return labels


def channel_positions(
    image: xr.DataArray, channels: list, position: int, *, fix: str = "Pass channels that every image has."
) -> np.ndarray:
    """Positions along ``c`` of ``channels``, found by the labels of the ``c`` coordinate as ``image.sel`` does.

    ``position`` is the image's place in the caller's list and ``fix`` the last sentence of the error (for the
    message).

    Raises
    ------
    KeyError
        Naming the missing channels (with the closest available name when one is close, ignoring case), listing the
        available ones, and ending with ``fix``.
    """
    available = channel_labels(image)
    lookup = {c: i for i, c in enumerate(available)}
    missing = [plain(c) for c in channels if plain(c) not in lookup]
    if missing:
        raise KeyError(
            f"Channel(s) {missing} not found in image {image_name(image, position)}"
            f"{did_you_mean(missing, available)}; available channels: {available}. {fix}"
        )
    return np.array([lookup[plain(c)] for c in channels], dtype=np.int64)


def did_you_mean(wrong: list, known: list) -> str:
    """Return ``" (did you mean 'PanKeratin'?)"`` for the ``known`` names closest to ``wrong`` ones, or ``""``.

    Case is ignored when comparing.

    Parameters
    ----------
    wrong : list
        Names that were not found.
    known : list
        The names that exist.
    """
    by_folded = {}
    for name in known:
        by_folded.setdefault(str(name).casefold(), name)
    found = []
    for name in wrong:
        close = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=1, cutoff=0.6)
        if close:
            found.append((name, by_folded[close[0]]))
    if not found:
        return ""
    if len(wrong) == 1:
        return f" (did you mean {found[0][1]!r}?)"
    return " (did you mean " + ", ".join(f"{right!r} for {name!r}" for name, right in found) + "?)"


def plain(label):
    """Return a channel label as a Python scalar: ``np.str_('CD45')`` becomes ``'CD45'``.

    Labels then compare as ``sel`` compares them and print as the user typed them.
    """
    return label.item() if isinstance(label, np.generic) else label


def channel_labels(image: xr.DataArray) -> list:
    """Return the labels of an image's ``c`` coordinate (positions when it has none)."""
    if "c" in image.coords:
        return [plain(c) for c in image.coords["c"].values]
    return list(range(image.sizes["c"]))
