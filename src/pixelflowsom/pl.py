"""Plots of a pixel clustering that an image analyst reads at a glance.

* :func:`metacluster_image`: the metacluster label image with a legend of metacluster colours;
* :func:`phenotype_heatmap` / :func:`phenotype_heatmap_from_fsom`: the median channel intensity of every metacluster,
  scaled per channel to [0, 1] (or z-scored), as pixel-clustering papers show phenotypes; its numbers, unscaled, are
  :func:`~pixelflowsom.metacluster_table`;
* :func:`node_heatmap`: the channel intensities of every SOM node (e.g. its code), ids boxed in their metacluster's
  colour;
* :func:`som_grid` / :func:`som_grid_from_arrays`: the SOM grid, nodes coloured by metacluster (and sized by their
  pixels when known).
* :func:`n_clusters_criterion`: how the number of metaclusters was chosen (the criterion against ``k``).
* :func:`metacluster_proportions`: the share of every metacluster in every image (FOV), one stacked bar per FOV;
* :func:`drift_heatmap`: how far every FOV's channel medians lie from the cohort's (robust z-scores), drifting FOVs
  marked.

Metaclusters are **1-based** in every picture, as in the label images that :meth:`PixelFlowSOM.predict
<pixelflowsom.PixelFlowSOM.predict>` returns (0 is the background: pixels with a NaN channel). The fitted
attributes of the estimator and of ``flowsom`` are 0-based; these functions add 1 where they read them. Metacluster
``k`` has the same colour in every picture: colour ``k`` of colorcet's glasbey palette ``glasbey_bw_minc_20``, 256
colours each picked to be as distinct as possible from all before it, from the black background, from the white
figure and from greys; the colour of ``k`` does not depend on how many metaclusters there are (ids above 256 reuse
the colour of ``k - 256``).

Every function returns the :class:`matplotlib.figure.Figure` it drew on (a new one from
:func:`matplotlib.pyplot.subplots` unless ``ax`` is given; close it with ``plt.close(fig)`` when drawing many) and
saves it when ``save`` is a path. Nothing calls ``plt.show()``. matplotlib is needed by this module only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from functools import lru_cache
from numbers import Integral

import colorcet
import numpy as np

from ._tables import aggregate, check_counts, check_pixels

try:
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes
    from matplotlib.collections import PatchCollection
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize, to_rgba
    from matplotlib.patches import Circle, Patch, Rectangle
except ImportError as error:  # pragma: no cover - matplotlib is installed wherever the tests run
    raise ImportError(
        "pixelflowsom.pl needs matplotlib; install it with `pip install matplotlib`. The rest of pixelflowsom "
        "works without it."
    ) from error

__all__ = [
    "drift_heatmap",
    "metacluster_image",
    "metacluster_proportions",
    "n_clusters_criterion",
    "node_heatmap",
    "phenotype_heatmap",
    "phenotype_heatmap_from_fsom",
    "som_grid",
    "som_grid_from_arrays",
]

#: Colour of label 0 (background: pixels with a NaN channel).
_BACKGROUND = (0.0, 0.0, 0.0, 1.0)
#: Resolution of saved figures.
_DPI = 150
#: Legend entries per legend column.
_LEGEND_ROWS = 20
#: Most legend entries drawn; an image with more ids (e.g. SOM nodes) gets none.
_MAX_LEGEND = 100

# ---------------------------------------------------------------------------------------------- colours


@lru_cache(maxsize=8)
def _palette(n: int):
    """RGB colours of metaclusters ``1..n`` (row ``k - 1``), shape ``(n, 3)``, read-only; a prefix of one sequence.

    colorcet's ``glasbey_bw_minc_20``: a glasbey palette made to be distinct from black and white (its ``bw``) and
    from greys (``minc_20``: a minimum chroma), repeated every 256 colours.
    """
    glasbey = np.asarray(colorcet.glasbey_bw_minc_20, dtype=np.float64)
    colours = glasbey[np.arange(n) % len(glasbey)]
    colours.flags.writeable = False
    return colours


def _metacluster_colors(ids):
    """RGBA colours of 1-based metacluster ids (0 is the background), shape ``(len(ids), 4)``.

    Shared by all plots, so metacluster ``k`` looks the same everywhere. Assumes non-negative integer ids.
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    lut = np.ones((int(ids.max(initial=0)) + 1, 4))
    lut[0] = _BACKGROUND
    lut[1:, :3] = _palette(len(lut) - 1)
    return lut[ids]


def _text_color(rgba):
    """Black or white, whichever reads better on ``rgba``."""
    r, g, b = to_rgba(rgba)[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _check_names(names):
    """Validate ``names`` (mapping of 1-based metacluster id -> name, or None); returns ``{int: str}``."""
    if names is None:
        return {}
    if not isinstance(names, Mapping):
        raise TypeError(f"names must be a mapping of metacluster id (1-based) -> name, or None; got {names!r}.")
    checked = {}
    for k, name in names.items():
        if not isinstance(k, Integral) or isinstance(k, bool):
            raise TypeError(f"names must be keyed by integer metacluster ids (1-based), got the key {k!r}.")
        checked[int(k)] = str(name)
    return checked


def _metacluster_label(k, names):
    """``"3"``, or ``"3 tumour"`` when ``names`` names metacluster 3."""
    k = int(k)
    return f"{k} {names[k]}" if k in names else str(k)


# ---------------------------------------------------------------------------------------------- figure plumbing


def _figure_and_axes(ax, figsize):
    """Make a constrained-layout figure with one axes, or return the (root) figure of ``ax``."""
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax={ax!r} must be a matplotlib Axes or None.")
    fig = ax.figure
    return getattr(fig, "figure", None) or fig, ax  # a SubFigure's .figure is its root figure


def _finish(fig, save):
    """Save ``fig`` to ``save`` (format from the suffix, PNG without one) unless it is None; return ``fig``."""
    if save is not None:
        if not isinstance(save, str | os.PathLike):
            raise TypeError(f"save={save!r} must be a file path (str or os.PathLike) or None.")
        fig.savefig(save, dpi=_DPI, bbox_inches="tight")
    return fig


def _legend(ax, colors, names, title=None):
    """Draw a legend of colour patches to the right of ``ax``, in columns of at most ``_LEGEND_ROWS`` entries."""
    handles = [Patch(facecolor=c, edgecolor="0.4", linewidth=0.5, label=n) for c, n in zip(colors, names, strict=True)]
    return ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        ncols=max(1, math.ceil(len(handles) / _LEGEND_ROWS)),
        fontsize="small",
        title=title,
        title_fontsize="small",
        frameon=False,
    )


def _legend_width(entries):
    """Width in inches the legend of the texts ``entries`` needs ("metacluster k": 1.5 inches per column)."""
    longest = max(map(len, entries), default=0)
    return (0.5 + 0.07 * max(longest, 14)) * max(1, math.ceil(len(entries) / _LEGEND_ROWS))


# ---------------------------------------------------------------------------------------------- label images


def _check_max_pixels(max_pixels):
    if not isinstance(max_pixels, Integral) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r} must be a positive integer.")
    return int(max_pixels)


def _spatial_size(array):
    """Count the pixels of one ``(y, x)`` plane."""
    return int(array.shape[-1]) * int(array.shape[-2])


def _tree_arrays(tree):
    """List the scales of a multiscale labels element, largest first: ``[(name, DataArray), ...]``."""
    scales = []
    for name in tree.children:
        arrays = list(tree[name].ds.data_vars.values())
        if len(arrays) != 1:
            raise ValueError(f"Scale {name!r} of the multiscale labels holds {len(arrays)} arrays, expected one.")
        scales.append((name, arrays[0]))
    if not scales:
        raise ValueError("The multiscale labels (DataTree) have no scales; expected children 'scale0', 'scale1', ...")
    return sorted(scales, key=lambda item: -_spatial_size(item[1]))


def _spatial_array(labels, what="labels"):
    """Return the validated ``(y, x)`` or ``(z, y, x)`` array (numpy or dask) of a DataArray or array-like."""
    import xarray as xr

    if isinstance(labels, xr.DataArray):
        dims = tuple(labels.dims)
        canonical = ("y", "x") if len(dims) == 2 else ("z", "y", "x")
        if set(dims) != set(canonical):
            hint = (
                " Select one layer, e.g. labels.sel(label='metacluster')."
                if "label" in dims
                else " Rename or select its dims, e.g. labels.rename({'row': 'y', 'col': 'x'})."
            )
            raise ValueError(f"{what} has dims {dims}; expected ('y', 'x') or ('z', 'y', 'x').{hint}")
        array = labels.transpose(*canonical).data
    elif hasattr(labels, "ndim") and hasattr(labels, "shape") and hasattr(labels, "dtype"):
        array = labels  # numpy or dask array: keep it lazy
    else:
        array = np.asarray(labels)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{what} must be a 2D (y, x) or 3D (z, y, x) label image, got {array.ndim} dimension(s) with shape "
            f"{tuple(array.shape)}."
        )
    if np.dtype(array.dtype).kind not in "biu":
        raise TypeError(
            f"{what} must hold integer label ids, got dtype {array.dtype}; convert it, e.g. labels.astype(int)."
        )
    if min(array.shape) < 1:
        raise ValueError(f"{what} is empty: shape {tuple(array.shape)}.")
    return array


def _read_labels(labels, max_pixels):
    """Read a strided (y, x) plane of at most ``max_pixels`` pixels; returns ``(plane, extent, notes)``.

    ``extent`` places the plane in full-resolution pixel coordinates; ``notes`` describe what is shown.
    """
    import xarray as xr

    notes = []
    full_shape = None
    if isinstance(labels, xr.DataTree):
        scales = _tree_arrays(labels)
        full = _spatial_array(scales[0][1], what=f"Scale {scales[0][0]!r} of labels")
        full_shape = tuple(full.shape[-2:])
        large_enough = [item for item in scales if _spatial_size(item[1]) >= max_pixels]
        name, labels = large_enough[-1] if large_enough else scales[0]
        if name != scales[0][0]:
            notes.append(f"scale {name!r}")
        array = _spatial_array(labels, what=f"Scale {name!r} of labels")
    else:
        array = _spatial_array(labels)
    if array.ndim == 3:
        z = array.shape[0] // 2
        notes.insert(0, f"middle plane z = {z} of {array.shape[0]}")
        array = array[z]
    height, width = (int(s) for s in array.shape)
    if full_shape is None:
        full_shape = (height, width)
    step = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / step) * math.ceil(width / step) > max_pixels:
        step += 1
    plane = array[::step, ::step]
    plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane).astype(np.int64, copy=False)
    if step > 1:
        notes.append(f"1 in {step} pixels per axis")
    if plane.size and plane.min() < 0:
        raise ValueError(f"labels must be non-negative ids (0 = background), found {plane.min()}.")
    # Each shown pixel stands for a (fy, fx) block of full-resolution pixels (pixel centres at integers).
    fy, fx = full_shape[0] / height * step, full_shape[1] / width * step
    extent = (-0.5, plane.shape[1] * fx - 0.5, plane.shape[0] * fy - 0.5, -0.5)
    return plane, extent, notes


def metacluster_image(labels, *, names=None, ax=None, max_pixels=1_000_000, title=None, save=None):
    """Show a metacluster label image, one distinct colour per metacluster, with a legend of the colours.

    Parameters
    ----------
    labels : ndarray, dask array, xarray.DataArray or xarray.DataTree
        A label image of **1-based** metacluster ids with 0 for the background (pixels with a NaN channel), as
        :meth:`PixelFlowSOM.predict <pixelflowsom.PixelFlowSOM.predict>` returns it: 2D ``(y, x)`` or 3D
        ``(z, y, x)``, numpy- or dask-backed (a spatialdata labels element), or a multiscale labels element (a
        ``DataTree`` with ``scale0``, ``scale1``, ...). A DataArray must have dims ``("y", "x")`` or
        ``("z", "y", "x")``. Any integer ids work, e.g. the SOM-node layer of ``transform``.
    names : mapping of int to str or None, default=None
        Names of metaclusters by 1-based id, e.g. ``{3: "tumour"}``, added to their legend entries
        ("metacluster 3 tumour"); metaclusters without a name keep their id only.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the image and the legend.
    max_pixels : int, default=1_000_000
        Most pixels to read and show. Larger images are subsampled before anything is computed: every ``s``-th
        pixel along ``y`` and ``x`` (nearest neighbour, labels are never interpolated), so a dask array computes
        only the chunks holding those pixels. Of a multiscale element, the coarsest scale with at least
        ``max_pixels`` pixels is read (``scale0`` if none has), subsampled the same way.
    title : str or None, default=None
        Title of the axes; ``None`` says "Metaclusters" and what is shown (z plane, subsampling, scale).
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on.

    See Also
    --------
    som_grid : The SOM nodes, in the same colours.

    Notes
    -----
    A 3D image shows its middle z plane, ``z = n_z // 2``; pass ``labels[z]`` (or ``labels.isel(z=z)``) to see
    another one. The background (0) is black and labelled "background" in the legend; metacluster ``k`` is labelled
    "metacluster k" (and its name when ``names`` has one). The legend lists the ids present in the shown pixels
    only, so a metacluster too small to be hit by the subsampling is missing from it; with more than 100 ids there
    is no legend. The axes are in full-resolution pixel coordinates.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import pl
    >>> labels = np.array([[0, 1, 1], [2, 2, 3]])
    >>> fig = pl.metacluster_image(labels, title="four pixel classes")
    >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    ['background', 'metacluster 1', 'metacluster 2', 'metacluster 3']
    """
    max_pixels = _check_max_pixels(max_pixels)
    names = _check_names(names)
    plane, extent, notes = _read_labels(labels, max_pixels)
    n_ids = int(plane.max(initial=0)) + 1
    cmap = ListedColormap(_metacluster_colors(np.arange(n_ids)), name="metaclusters")
    norm = BoundaryNorm(np.arange(n_ids + 1) - 0.5, n_ids)
    present = np.flatnonzero(np.bincount(plane.ravel(), minlength=n_ids))

    # The image axes get about 6 inches along its longer side, the legend its columns to the right.
    aspect = (extent[2] - extent[3]) / (extent[1] - extent[0])
    width, height = (6.0, max(6.0 * aspect, 1.5)) if aspect <= 1 else (max(6.0 / aspect, 1.5), 6.0)
    entries = ["background" if k == 0 else f"metacluster {_metacluster_label(k, names)}" for k in present]
    legend_width = _legend_width(entries) if len(present) <= _MAX_LEGEND else 0.0
    fig, ax = _figure_and_axes(ax, (width + legend_width + 0.6, height + 0.9))
    ax.imshow(plane, cmap=cmap, norm=norm, interpolation="nearest", extent=extent)
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    if title is None:
        title = "Metaclusters" + (f"\n({', '.join(notes)})" if notes else "")
    ax.set_title(title)
    if len(present) <= _MAX_LEGEND:
        _legend(ax, cmap(norm(present)), entries)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------- phenotype heatmap

#: The ``scale`` options of the heatmap.
_SCALES = ("minmax", "zscore", None)


def _check_scale(scale):
    if not (scale is None or (isinstance(scale, str) and scale in _SCALES)):
        raise ValueError(f"scale={scale!r} must be 'minmax', 'zscore' or None.")
    return scale


def _minmax(values):
    """Scale every column to [0, 1] across the rows (min -> 0, max -> 1); constant columns become 0, NaN stays NaN."""
    finite = np.isfinite(values)
    low = np.min(np.where(finite, values, np.inf), axis=0)
    high = np.max(np.where(finite, values, -np.inf), axis=0)
    span = high - low
    with np.errstate(invalid="ignore"):
        scaled = (values - low) / np.where(span > 0, span, 1.0)
    return np.where(np.isnan(values), np.nan, np.where(span > 0, scaled, 0.0))


def _zscore(values):
    """Z-score every column across the rows (population std); constant columns become 0, NaN stays NaN."""
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / np.maximum(n, 1)
        std = np.sqrt(np.where(finite, (values - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n, 1))
        z = (values - mean) / np.where(std > 0, std, 1.0)
    return np.where(np.isnan(values), np.nan, np.where(std > 0, z, 0.0))


def phenotype_heatmap(
    X,
    metaclusters,
    channels=None,
    *,
    counts=None,
    names=None,
    one_based=True,
    ax=None,
    agg="median",
    scale="minmax",
    title=None,
    save=None,
):
    """Heatmap of the channel intensities of every metacluster: channels x metaclusters.

    Every cell is the median (or mean) intensity of one channel over the pixels of one metacluster, by default
    scaled per channel to [0, 1] across the metaclusters, so every row shows in which metaclusters a marker is
    highest (1) and lowest (0), the way pixel-clustering papers show phenotypes. The unscaled numbers are
    :func:`~pixelflowsom.metacluster_table`.

    Parameters
    ----------
    X : array-like of shape (n_pixels, n_channels)
        Pixel intensities, e.g. a sample of the pixels clustered (a dask array is computed). NaN values are ignored.
    metaclusters : array-like of int, shape (n_pixels,)
        Metacluster of every row: **1-based** with 0 for the background (rows left out), as in the label images,
        or 0-based with ``one_based=False`` (as ``PixelFlowSOM.predict`` returns for tables).
    channels : str, list of str or None, default=None
        Names of the ``n_channels`` channels; ``None`` takes the columns of a DataFrame ``X``, else the column
        positions.
    counts : array-like of int or None, default=None
        Pixels of every metacluster in the image(s), shown on the top axis ("pixels in the image(s)"), indexed by
        **1-based** metacluster id whatever ``one_based`` says: ``counts[k]`` for metacluster ``k``, ``counts[0]``
        the background (ignored), e.g. ``np.bincount(labels.ravel())`` of the label image (ids beyond its end have
        0 pixels). A metacluster with pixels in ``counts`` but no row in ``X`` gets a grey column. ``None`` shows
        the rows of ``X`` per metacluster ("pixels in the sample").
    names : mapping of int to str or None, default=None
        Names of metaclusters by 1-based id, e.g. ``{3: "tumour"}``, shown after their id on the bottom axis
        ("3 tumour").
    one_based : bool, default=True
        Whether ``metaclusters`` are 1-based ids with 0 the background (True) or 0-based (False). The heatmap
        always shows 1-based ids.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the table.
    agg : {"median", "mean"}, default="median"
        Per metacluster statistic of every channel.
    scale : {"minmax", "zscore", None}, default="minmax"
        How every channel (row) is scaled across the metaclusters shown. ``"minmax"``: to [0, 1], the lowest
        metacluster 0 and the highest 1 (a constant row is 0), with a sequential colormap. ``"zscore"``: subtract
        the mean of the row and divide by its (population) standard deviation (a constant row is 0), with a
        diverging colormap centred at 0. ``None``: the raw statistic with a sequential colormap.
    title : str or None, default=None
        Title of the axes; ``None`` describes the statistic.
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on. The heatmap is ``fig.axes[0].images[0]``; its array is ``(n_channels,
        n_metaclusters)``, metaclusters in increasing id order.

    See Also
    --------
    phenotype_heatmap_from_fsom : The same for a ``flowsom.FlowSOM`` object.
    pixelflowsom.metacluster_table : The same statistics, unscaled, with the pixels of every metacluster.

    Notes
    -----
    The bottom axis names the metaclusters shown (1-based ids, boxed in their colour of :func:`metacluster_image`
    and :func:`som_grid`): those with rows in ``X`` and, with ``counts``, those with pixels in the image(s). The top
    axis gives their numbers of pixels: in the image(s) with ``counts``, else in ``X``, which for a sample of the
    pixels says little about how much tissue a metacluster covers. Missing values (a channel that is NaN for all
    pixels of a metacluster) are grey.

    The min-max scaling keeps the contrast of every channel whatever the sizes and number of the metaclusters;
    a z-score depends on how the metaclusters spread around their mean, so one far-off metacluster makes all the
    others look alike. Neither compares channels with each other: read the unscaled table for that.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import pl
    >>> X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    >>> fig = pl.phenotype_heatmap(X, [1, 1, 2, 2], ["CD3", "CD20"])
    >>> fig.axes[0].images[0].get_array().tolist()  # medians [2, 0] and [0, 3], scaled per channel
    [[1.0, 0.0], [0.0, 1.0]]
    >>> fig = pl.phenotype_heatmap(X, [1, 1, 2, 2], ["CD3", "CD20"], scale="zscore")
    >>> fig.axes[0].images[0].get_array().tolist()
    [[1.0, -1.0], [-1.0, 1.0]]

    With the pixels of the label image on the top axis and named metaclusters on the bottom one:

    >>> labels = np.array([[0, 1, 1], [2, 2, 2]])
    >>> fig = pl.phenotype_heatmap(
    ...     X, [1, 1, 2, 2], ["CD3", "CD20"], counts=np.bincount(labels.ravel()), names={1: "T cell"}
    ... )
    >>> [tick.get_text() for tick in fig.axes[0].child_axes[0].get_xticklabels()]
    ['2', '3']
    >>> [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    ['1 T cell', '2']
    """
    scale = _check_scale(scale)
    names = _check_names(names)
    X, ids, channels = check_pixels(X, metaclusters, channels, one_based=one_based, agg=agg)
    counts = check_counts(counts)
    sizes, values = aggregate(X, ids, agg, n_ids=0 if counts is None else len(counts) - 1)
    if counts is None:
        pixels, count_label = sizes, "pixels in the sample"
    else:
        pixels = np.zeros(len(sizes), dtype=np.int64)
        pixels[: len(counts) - 1] = counts[1:]
        count_label = "pixels in the image(s)"
    shown = np.flatnonzero((sizes > 0) | (pixels > 0))
    return _draw_heatmap(
        shown + 1,
        pixels[shown],
        values[shown],
        channels,
        ax=ax,
        agg=agg,
        scale=scale,
        title=title,
        save=save,
        count_label=count_label,
        names=names,
    )


def phenotype_heatmap_from_fsom(
    fsom, *, channels=None, counts=None, names=None, ax=None, agg="median", scale="minmax", title=None, save=None
):
    """:func:`phenotype_heatmap` of a ``flowsom.FlowSOM`` object: its cells by its metaclusters.

    Parameters
    ----------
    fsom : flowsom.FlowSOM
        A FlowSOM result; ``fsom.get_cell_data()`` gives the intensities (``.X``), channel names (``.var_names``)
        and 0-based metaclusters (``.obs["metaclustering"]``, shown 1-based).
    channels : list of str or None, default=None
        Channels to show, by name; ``None`` shows those used for the clustering (all when unknown).
    counts : array-like of int or None, default=None
        As in :func:`phenotype_heatmap`: pixels per **1-based** metacluster id, e.g. ``np.bincount`` of the label
        image; ``None`` shows the cells of ``fsom`` per metacluster.
    names : mapping of int to str or None, default=None
        As in :func:`phenotype_heatmap`, by 1-based id.
    ax : matplotlib.axes.Axes or None, default=None
        As in :func:`phenotype_heatmap`.
    agg : {"median", "mean"}, default="median"
        As in :func:`phenotype_heatmap`.
    scale : {"minmax", "zscore", None}, default="minmax"
        As in :func:`phenotype_heatmap`.
    title : str or None, default=None
        As in :func:`phenotype_heatmap`.
    save : str, path-like or None, default=None
        As in :func:`phenotype_heatmap`.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on.

    Examples
    --------
    >>> import anndata
    >>> import flowsom
    >>> import numpy as np
    >>> from pixelflowsom import pl
    >>> X = np.random.default_rng(0).normal(size=(300, 4)) + np.repeat(np.eye(4) * 3, 75, axis=0)
    >>> fsom = flowsom.FlowSOM(anndata.AnnData(X), n_clusters=3, xdim=3, ydim=3, seed=0)
    >>> fig = pl.phenotype_heatmap_from_fsom(fsom)
    >>> fig.axes[0].images[0].get_array().shape  # channels x metaclusters
    (4, 3)
    """
    if not callable(getattr(fsom, "get_cell_data", None)):
        raise TypeError(f"fsom must be a flowsom.FlowSOM object, got {type(fsom).__name__}.")
    cells = fsom.get_cell_data()
    all_channels = [str(name) for name in cells.var_names]
    if channels is None:
        used = cells.var["cols_used"] if "cols_used" in cells.var else None
        channels = [n for n, u in zip(all_channels, used, strict=True) if u] if used is not None else all_channels
    channels = [channels] if isinstance(channels, str) else [str(c) for c in channels]
    missing = [c for c in channels if c not in all_channels]
    if missing or not channels:
        raise ValueError(f"Channel(s) {missing} not found; the FlowSOM object has channels {all_channels}.")
    columns = [all_channels.index(c) for c in channels]
    X = np.asarray(cells.X)[:, columns]
    metaclusters = np.asarray(cells.obs["metaclustering"]).astype(np.int64)
    return phenotype_heatmap(
        X,
        metaclusters,
        channels,
        counts=counts,
        names=names,
        one_based=False,
        ax=ax,
        agg=agg,
        scale=scale,
        title=title,
        save=save,
    )


def _draw_heatmap(unique, counts, values, channels, *, ax, agg, scale, title, save, count_label, names=None):
    """Draw the channels x metaclusters heatmap of aggregated ``values`` (metaclusters x channels).

    ``unique`` are the 1-based ids of the rows of ``values``, ``counts`` their pixels (labelled ``count_label`` on
    the top axis), ``names`` a validated ``{id: name}`` (or None).
    """
    names = names or {}
    if scale == "zscore":
        data = _zscore(values).T
        limit = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
        norm = Normalize(-max(limit, 1e-12), max(limit, 1e-12))
        label = f"{agg} intensity, z-scored per channel"
    elif scale == "minmax":
        data = _minmax(values).T
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.8")
        norm = Normalize(0.0, 1.0)
        label = f"{agg} intensity, scaled per channel to [0, 1]"
    else:
        data = values.T
        finite = data[np.isfinite(data)]
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.8")
        norm = Normalize(*(finite.min(), finite.max()) if finite.size else (0.0, 1.0))
        label = f"{agg} intensity"
    n_meta, n_channels = len(unique), len(channels)
    id_labels = [_metacluster_label(k, names) for k in unique]
    longest_id = max(map(len, id_labels))
    longest = max(len(c) for c in channels)
    figsize = (
        max(4.5, 0.36 * n_meta + 0.08 * longest + 2.6),
        max(3.0, 0.26 * n_channels + 2.3 + (0.07 * longest_id if longest_id > 3 else 0.0)),
    )
    fig, ax = _figure_and_axes(ax, figsize)
    image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=label, shrink=1.0 if n_channels <= 12 else 0.6)
    ax.set_yticks(np.arange(n_channels), labels=channels, fontsize="small" if n_channels > 30 else None)
    ax.set_ylabel("channel")
    positions = np.arange(n_meta)
    ax.set_xticks(positions, labels=id_labels, fontsize="small", rotation=90 if longest_id > 3 else 0)
    for tick, colour in zip(ax.get_xticklabels(), _metacluster_colors(unique), strict=True):
        tick.set_color(_text_color(colour))
        tick.set_bbox({"facecolor": colour, "edgecolor": "none", "boxstyle": "round,pad=0.2"})
    ax.set_xlabel("metacluster")
    top = ax.secondary_xaxis("top")
    count_labels = [f"{c:,}" for c in counts]
    rotation = 90 if max(map(len, count_labels)) > 5 else 0
    top.set_xticks(positions, labels=count_labels, rotation=rotation, fontsize="x-small")
    top.set_xlabel(count_label, fontsize="small")
    ax.tick_params(length=0)
    ax.set_title(title if title is not None else f"{agg.capitalize()} intensity per metacluster")
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------- SOM grid


def _som_layout(model):
    """``(xdim, ydim, node_metacluster (1-based), sizes or None, size_name)`` of a fitted model."""
    if callable(getattr(model, "get_cluster_data", None)):
        clusters = model.get_cluster_data()
        xdim, ydim = int(clusters.uns["xdim"]), int(clusters.uns["ydim"])
        node_metacluster = np.asarray(clusters.obs["metaclustering"]).astype(np.int64) + 1
        sizes = np.asarray(clusters.obs["percentages"], dtype=np.float64) if "percentages" in clusters.obs else None
        return xdim, ydim, node_metacluster, sizes, "sampled pixels"
    from sklearn.utils.validation import check_is_fitted

    from pixelflowsom._estimator import PixelFlowSOM

    if not isinstance(model, PixelFlowSOM):
        raise TypeError(f"model must be a fitted PixelFlowSOM or a flowsom.FlowSOM object, got {type(model).__name__}.")
    check_is_fitted(model, "node_metacluster_")
    return int(model.xdim), int(model.ydim), np.asarray(model.node_metacluster_, dtype=np.int64) + 1, None, "pixels"


def som_grid(model, *, sizes=None, names=None, ax=None, title=None, save=None):
    """Draw the SOM grid: one circle per node, coloured by its metacluster, sized by its pixels when known.

    Node ``i`` sits at grid position ``(x, y) = (i // ydim, i % ydim)``, FlowSOM's node order. Colours are those of
    :func:`metacluster_image` for the same (1-based) metacluster, so the grid reads as a legend of the image.

    Parameters
    ----------
    model : PixelFlowSOM or flowsom.FlowSOM
        A fitted :class:`~pixelflowsom.PixelFlowSOM` (its ``xdim``, ``ydim`` and 0-based ``node_metacluster_``) or
        a ``flowsom.FlowSOM`` (``get_cluster_data()``: ``obs["metaclustering"]``, 0-based, ``uns["xdim"]``,
        ``uns["ydim"]``, and ``obs["percentages"]`` for the sizes).
    sizes : array-like of shape (xdim * ydim,) or None, default=None
        Pixels (or any non-negative weight) per node; circle areas are proportional to them. ``None`` uses a
        FlowSOM object's percentages and draws equal circles labelled with their metacluster for a PixelFlowSOM
        (which keeps no counts: pass e.g. ``np.bincount(model.transform(X)[:, 0], minlength=model.xdim *
        model.ydim)``).
    names : mapping of int to str or None, default=None
        Names of metaclusters by 1-based id, e.g. ``{3: "tumour"}``, added to their legend entries
        ("metacluster 3 tumour").
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the grid.
    title : str or None, default=None
        Title of the axes; ``None`` describes the grid.
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on. The nodes are ``fig.axes[0].collections[0]``, in node order.

    See Also
    --------
    metacluster_image : The label image, in the same colours.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import PixelFlowSOM, pl
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(m, 0.1, size=(100, 2)) for m in (0, 1, 2)])
    >>> model = PixelFlowSOM(n_clusters=3, xdim=3, ydim=3, random_state=0).fit(X)
    >>> fig = pl.som_grid(model)
    >>> len(fig.axes[0].collections[0].get_paths())  # one circle per node
    9
    """
    names = _check_names(names)
    xdim, ydim, node_metacluster, default_sizes, unit = _som_layout(model)
    return _draw_som_grid(xdim, ydim, node_metacluster, sizes, default_sizes, unit, names, ax, title, save)


def som_grid_from_arrays(xdim, ydim, node_metacluster, *, sizes=None, names=None, ax=None, title=None, save=None):
    """Draw the SOM grid of :func:`som_grid` from plain arrays, without a fitted model (e.g. from a saved record).

    Parameters
    ----------
    xdim, ydim : int
        Width and height of the SOM grid.
    node_metacluster : array-like of int, shape (xdim * ydim,)
        The **1-based** metacluster of every node, in FlowSOM's node order (what ``cluster`` records as its
        ``"mapping"``).
    sizes : array-like of shape (xdim * ydim,) or None, default=None
        Pixels per node (circle areas are proportional to them), e.g. ``np.bincount`` of the SOM-node labels without
        its background entry; ``None`` draws equal circles labelled with their metacluster.
    names : mapping of int to str or None, default=None
        Names of metaclusters by 1-based id.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the grid.
    title : str or None, default=None
        Title of the axes; ``None`` describes the grid.
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on. The nodes are ``fig.axes[0].collections[0]``, in node order.

    Examples
    --------
    >>> from pixelflowsom import pl
    >>> fig = pl.som_grid_from_arrays(2, 2, [1, 1, 2, 3], sizes=[10, 0, 5, 1])
    >>> len(fig.axes[0].collections[0].get_paths())
    4
    """
    names = _check_names(names)
    for value, what in ((xdim, "xdim"), (ydim, "ydim")):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what}={value!r} must be a positive integer.")
    node_metacluster = np.asarray(node_metacluster)
    if node_metacluster.dtype.kind not in "iu" or (node_metacluster.size and node_metacluster.min() < 0):
        raise ValueError("node_metacluster must hold non-negative integer (1-based) metacluster ids.")
    return _draw_som_grid(
        int(xdim), int(ydim), node_metacluster.astype(np.int64), sizes, None, "pixels", names, ax, title, save
    )


def _draw_som_grid(xdim, ydim, node_metacluster, sizes, default_sizes, unit, names, ax, title, save):
    """Draw the grid of ``som_grid``: validated ``names``, 1-based ``node_metacluster``; ``sizes`` as given."""
    n_nodes = xdim * ydim
    if node_metacluster.shape != (n_nodes,):
        raise ValueError(
            f"The model has {node_metacluster.shape[0]} node metaclusters for a {xdim} x {ydim} grid of {n_nodes} "
            "nodes."
        )
    if sizes is None:
        sizes = default_sizes
    else:
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.shape != (n_nodes,) or not np.all(np.isfinite(sizes)) or np.any(sizes < 0):
            raise ValueError(
                f"sizes must be {n_nodes} (xdim * ydim) finite non-negative numbers, one per node; got shape "
                f"{sizes.shape}."
            )
        unit = "pixels"
    if sizes is not None and not np.any(sizes > 0):
        sizes = None
    radius = np.full(n_nodes, 0.42) if sizes is None else np.maximum(0.42 * np.sqrt(sizes / sizes.max()), 0.06)
    colours = _metacluster_colors(node_metacluster)
    nodes = np.arange(n_nodes)
    gx, gy = nodes // ydim, nodes % ydim

    present = np.unique(node_metacluster)
    entries = [f"metacluster {_metacluster_label(k, names)}" for k in present]
    cell = 0.5 if max(xdim, ydim) <= 16 else 8.0 / max(xdim, ydim)
    figsize = (max(2.5, cell * xdim) + _legend_width(entries) + 1.0, max(2.5, cell * ydim) + 1.2)
    fig, ax = _figure_and_axes(ax, figsize)
    circles = PatchCollection(
        [Circle((x, y), r) for x, y, r in zip(gx, gy, radius, strict=True)],
        facecolors=colours,
        edgecolors="0.25",
        linewidths=0.6,
    )
    ax.add_collection(circles)
    if sizes is None and n_nodes <= 400:
        fontsize = min(9.0, 72 * cell * 0.4)
        for x, y, k, colour in zip(gx, gy, node_metacluster, colours, strict=True):
            ax.text(x, y, str(k), ha="center", va="center", fontsize=fontsize, color=_text_color(colour))
    ax.set_xlim(-0.6, xdim - 0.4)
    ax.set_ylim(-0.6, ydim - 0.4)
    ax.set_aspect("equal")
    if xdim <= 30:
        ax.set_xticks(np.arange(xdim))
    if ydim <= 30:
        ax.set_yticks(np.arange(ydim))
    ax.set_xlabel("SOM x (node // ydim)")
    ax.set_ylabel("SOM y (node % ydim)")
    if title is None:
        title = f"SOM grid, {xdim} x {ydim} nodes" + (f"\n(area ~ {unit})" if sizes is not None else "")
    ax.set_title(title)
    _legend(ax, _metacluster_colors(present), entries)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------- number of metaclusters

#: What each rule of ``choose_n_clusters`` plots: (column, y label, description for the title).
_N_CLUSTERS_RULES = {
    "knee": ("log_wss", "within-cluster sum of squares (log scale)", "knee of the log within-cluster sum of squares"),
    "elbow": ("wss_smoothed", "within-cluster sum of squares", "elbow of the within-cluster sum of squares"),
    "delta_area": ("delta_area", "relative increase of the CDF area", "consensus delta area"),
}


def _check_choice(choice):
    """Return ``(n_clusters, criterion, method, cdf, stability)`` of an ``NClustersChoice``, validated."""
    fields = ("n_clusters", "criterion", "method", "cdf")
    if not all(hasattr(choice, name) for name in fields) or getattr(choice, "method", None) not in _N_CLUSTERS_RULES:
        raise TypeError(
            f"choice must be what pixelflowsom's choose_n_clusters returns (an NClustersChoice), got "
            f"{type(choice).__name__}."
        )
    criterion = choice.criterion
    column = _N_CLUSTERS_RULES[choice.method][0]
    if column not in criterion or int(choice.n_clusters) not in criterion.index:
        raise ValueError(
            f"choice.criterion has no {column!r} column or no row k = {choice.n_clusters}; pass the NClustersChoice "
            "unchanged."
        )
    stability = getattr(choice, "stability", None)  # None in choices pickled before it existed
    return int(choice.n_clusters), criterion, choice.method, dict(choice.cdf), stability


def _n_clusters_axes(ax, panels):
    """Return ``(fig, criterion_ax, extra_axes)``: a new figure with the criterion and ``panels``, or the given axes.

    ``panels`` names the extra panels the choice can draw (``"cdf"``, ``"stability"``). ``ax`` may be None (a new
    figure with all of them), one Axes (the criterion only) or a sequence of ``1 + len(panels)`` Axes.
    """
    if ax is None:
        fig, axes = plt.subplots(
            1, 1 + len(panels), figsize=(6.0 + 5.0 * len(panels), 4.2), layout="constrained", squeeze=False
        )
        return fig, axes[0, 0], list(axes[0, 1:])
    if isinstance(ax, Axes):
        fig, left = _figure_and_axes(ax, None)
        return fig, left, []
    axes = list(ax) if isinstance(ax, list | tuple | np.ndarray) else None
    if axes is None or not axes or not all(isinstance(a, Axes) for a in axes):
        raise TypeError(
            f"ax={ax!r} must be None, a matplotlib Axes or a sequence of Axes (the criterion, then the "
            "consensus CDF and/or the stability)."
        )
    if len(axes) != 1 + len(panels):
        drawn = " and ".join(["the criterion", *(_PANEL_NAMES[p] for p in panels)])
        raise ValueError(
            f"ax holds {len(axes)} Axes but this choice draws {1 + len(panels)}: {drawn}; pass one Axes for the "
            f"criterion alone or {1 + len(panels)}."
        )
    fig, left = _figure_and_axes(axes[0], None)
    return fig, left, axes[1:]


#: How the extra panels of ``n_clusters_criterion`` are named in messages.
_PANEL_NAMES = {"cdf": "the consensus CDF", "stability": "the stability across resamples"}


def _integer_ticks(ax, ks):
    """Put a tick at every ``k`` (every second or fifth one when there are many)."""
    step = 1 if len(ks) <= 20 else 2 if len(ks) <= 40 else 5
    ax.set_xticks(ks[(ks - ks[0]) % step == 0])


def _draw_knee(ax, criterion, k):
    """WSS on a log axis, the straight line from its first to its last ``k`` and the chosen ``k`` farthest below it."""
    ks = criterion.index.to_numpy()
    log_wss = criterion["log_wss"].to_numpy()
    wss = np.exp(log_wss)
    ax.plot(ks, wss, "-o", color="tab:blue", markersize=4, label="WSS (pixel-weighted)")
    ax.plot(ks[[0, -1]], wss[[0, -1]], "--", color="tab:orange", linewidth=1.2, label="line from first to last k")
    if len(ks) > 1:
        chord = np.exp(log_wss[0] + (log_wss[-1] - log_wss[0]) * (k - ks[0]) / (ks[-1] - ks[0]))
        here = wss[ks == k][0]
        ax.plot([k, k], [here, chord], ":", color="tab:red", linewidth=1.5, label="knee: farthest below the line")
    ax.set_yscale("log")
    _mark_choice(ax, k, wss[ks == k][0])
    ax.set_ylabel(_N_CLUSTERS_RULES["knee"][1])
    _integer_ticks(ax, ks)


def _draw_elbow(ax, criterion, k):
    """WSS, smoothed WSS and the two straight lines whose corner is the chosen ``k``."""
    ks = criterion.index.to_numpy()
    raw, smoothed = criterion["wss"].to_numpy(), criterion["wss_smoothed"].to_numpy()
    ax.plot(ks, smoothed, "-o", color="tab:blue", markersize=4, label="WSS, smoothed (R FlowSOM)")
    ax.plot(ks, raw, "o", color="0.55", markersize=3, label="WSS", zorder=3)
    for part in (ks < k, ks >= k):
        if part.sum() >= 2:
            slope, intercept = np.polyfit(ks[part], smoothed[part], 1)
            x = ks[part][[0, -1]]
            ax.plot(x, intercept + slope * x, "--", color="tab:orange", linewidth=1.2)
    ax.plot([], [], "--", color="tab:orange", linewidth=1.2, label="two-line fit")
    _mark_choice(ax, k, smoothed[ks == k][0])
    ax.set_ylabel(_N_CLUSTERS_RULES["elbow"][1])
    _integer_ticks(ax, ks)


def _draw_delta_area(ax, criterion, k):
    """Relative increase of the CDF area per ``k`` (symlog scale), the 2 % threshold and the chosen ``k``."""
    from ._metacluster import DELTA_AREA_THRESHOLD

    data = criterion["delta_area"].dropna()
    ks, delta = data.index.to_numpy(), data.to_numpy()
    ax.plot(ks, delta, "-o", color="tab:blue", markersize=4, label="delta area")
    label = f"{100 * DELTA_AREA_THRESHOLD:g} % threshold: k + 1 adds less"
    ax.axhline(DELTA_AREA_THRESHOLD, color="tab:red", linestyle=":", linewidth=1.2, label=label)
    ax.set_yscale("symlog", linthresh=0.01, linscale=0.5)
    _mark_choice(ax, k, delta[ks == k][0])
    ax.set_ylabel(_N_CLUSTERS_RULES["delta_area"][1])
    _integer_ticks(ax, ks)


def _mark_choice(ax, k, y):
    """Mark the chosen ``k``: a vertical line and a large red point labelled ``k = ...``."""
    ax.axvline(k, color="tab:red", linewidth=1.0, alpha=0.5)
    ax.plot([k], [y], "o", markersize=10, markerfacecolor="none", markeredgecolor="tab:red", markeredgewidth=2)
    ax.annotate(
        f"k = {k}",
        (k, y),
        xytext=(8, 8),
        textcoords="offset points",
        color="tab:red",
        fontweight="bold",
    )


def _draw_cdf(ax, cdf, k):
    """Consensus CDF of every ``k`` (viridis by ``k``, with a colorbar), the chosen one thick and black."""
    ks = np.array(sorted(cdf))
    cmap = plt.get_cmap("viridis")
    norm = BoundaryNorm(np.arange(ks[0], ks[-1] + 2) - 0.5, cmap.N)
    for kk in ks:
        x, curve = cdf[kk]
        if kk != k:
            ax.plot(x, curve, color=cmap(norm(kk)), linewidth=1.0, alpha=0.8)
    x, curve = cdf[k]
    ax.plot(x, curve, color="black", linewidth=2.5, label=f"k = {k} (chosen)")
    bar = ax.figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="k")
    bar.set_ticks(ks[(ks - ks[0]) % (1 if len(ks) <= 20 else 5) == 0])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("consensus index")
    ax.set_ylabel("CDF (fraction of pairs)")
    ax.set_title("Consensus CDF per k")
    ax.legend(loc="upper left", fontsize="small", frameon=False)


def _draw_stability(ax, stability, k):
    """Fraction of the resamples choosing every ``k`` (bars; the chosen ``k`` red, the others grey)."""
    ks = stability.index.to_numpy()
    fraction = stability.to_numpy()
    colors = np.where(ks == k, "tab:red", "0.6")
    ax.bar(ks, fraction, color=colors, width=0.8)
    chosen = float(fraction[ks == k][0]) if np.any(ks == k) else 0.0
    ax.set_ylim(0, 1.05)
    ax.set_xlim(ks[0] - 0.6, ks[-1] + 0.6)
    ax.set_xlabel("number of metaclusters k")
    ax.set_ylabel("fraction of resamples choosing k")
    ax.set_title(f"Stability: {100 * chosen:.0f} % of the resamples choose k = {k}")
    ax.grid(True, axis="y", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)
    _integer_ticks(ax, ks)


def n_clusters_criterion(choice, *, ax=None, title=None, save=None):
    """Draw how :func:`~pixelflowsom.choose_n_clusters` chose the number of clusters, and how stable the choice is.

    The criterion against ``k`` with the chosen ``k`` marked: for the knee (the default), the pixel-weighted
    within-cluster sum of squares (WSS) on a log axis, the straight line from its first to its last ``k`` and the
    chosen ``k``, the point farthest below that line; for the elbow, the WSS and its smoothing with the two straight
    lines whose corner is the elbow; for the consensus delta area, the relative increase of the area under the
    consensus CDF (symmetric log scale) with the 2 % threshold. Further panels, when the choice has them: the
    consensus CDF of every ``k`` (a well separated ``k`` has a CDF that is flat between 0 and 1: every pair of nodes
    is always or never together), and the stability, the fraction of resamples of the codes that chose every ``k``
    (a clear choice is one tall red bar; bars spread over several ``k`` mean the data do not settle ``k``).

    Parameters
    ----------
    choice : NClustersChoice
        What ``choose_n_clusters`` returned.
    ax : matplotlib.axes.Axes, sequence of Axes, or None, default=None
        Axes to draw on: one Axes gets the criterion only; a sequence gets the criterion, then the consensus CDF
        (when ``choice`` has CDF curves), then the stability (when it has one), and must hold exactly as many Axes.
        ``None`` makes a new figure with all the panels the choice has.
    title : str or None, default=None
        Title of the criterion axes; ``None`` names the rule and the chosen ``k``.
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on. The criterion axes is ``fig.axes[0]``; its first line is the criterion against ``k``.

    Raises
    ------
    TypeError
        If ``choice`` is not an :class:`~pixelflowsom.NClustersChoice`, ``ax`` is not None, an Axes or a sequence of
        Axes, or ``save`` is not a path.
    ValueError
        If ``choice.criterion`` lacks the rule's column or the chosen ``k``, or ``ax`` holds neither one Axes nor as
        many as the choice has panels.

    See Also
    --------
    som_grid : The SOM nodes coloured by their metacluster.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import pl
    >>> from pixelflowsom import choose_n_clusters
    >>> rng = np.random.default_rng(0)
    >>> codes = np.repeat(np.eye(4) * 4, 25, axis=0) + rng.normal(0, 0.3, size=(100, 4))
    >>> choice = choose_n_clusters(codes, max_clusters=10)
    >>> fig = pl.n_clusters_criterion(choice)
    >>> fig.axes[0].get_title()
    'Knee of the log within-cluster sum of squares: k = 4'
    >>> fig.axes[1].get_title()
    'Stability: 100 % of the resamples choose k = 4'
    """
    k, criterion, method, cdf, stability = _check_choice(choice)
    panels = (["cdf"] if cdf else []) + (["stability"] if stability is not None else [])
    fig, criterion_ax, extra_axes = _n_clusters_axes(ax, panels)
    {"knee": _draw_knee, "elbow": _draw_elbow, "delta_area": _draw_delta_area}[method](criterion_ax, criterion, k)
    criterion_ax.set_xlabel("number of metaclusters k")
    criterion_ax.grid(True, color="0.9", linewidth=0.6)
    criterion_ax.set_axisbelow(True)
    criterion_ax.legend(loc="upper right", fontsize="small", frameon=False)
    description = _N_CLUSTERS_RULES[method][2]
    criterion_ax.set_title(title if title is not None else f"{description[0].upper()}{description[1:]}: k = {k}")
    for panel, panel_ax in zip(panels, extra_axes, strict=False):
        if panel == "cdf":
            _draw_cdf(panel_ax, cdf, k)
        else:
            _draw_stability(panel_ax, stability, k)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------- SOM nodes


def node_heatmap(
    values, channels, *, node_metacluster=None, counts=None, scale="zscore", ax=None, title=None, save=None
):
    """Heatmap of the channel intensities of every SOM node: channels x nodes.

    Parameters
    ----------
    values : array-like of shape (n_nodes, n_channels)
        One row per node, e.g. the SOM codes or the median intensity of the pixels of every node. NaN is grey.
    channels : list of str
        Names of the ``n_channels`` channels.
    node_metacluster : array-like of int, shape (n_nodes,), or None, default=None
        The **1-based** metacluster of every node: the node ids on the bottom axis are boxed in their metacluster's
        colour (that of :func:`metacluster_image`); ``None`` leaves them plain.
    counts : array-like of int, shape (n_nodes,), or None, default=None
        Pixels of every node, shown on the top axis; ``None`` shows none.
    scale : {"minmax", "zscore", None}, default="zscore"
        How every channel (row) is scaled across the nodes, as in :func:`phenotype_heatmap`.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the table.
    title : str or None, default=None
        Title of the axes; ``None`` says "Channel intensity per SOM node".
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on; the heatmap is ``fig.axes[0].images[0]``, its array ``(n_channels, n_nodes)``.

    Examples
    --------
    >>> from pixelflowsom import pl
    >>> fig = pl.node_heatmap([[1.0, 0.0], [3.0, 2.0]], ["CD3", "CD20"], node_metacluster=[1, 2], scale=None)
    >>> fig.axes[0].images[0].get_array().tolist()
    [[1.0, 3.0], [0.0, 2.0]]
    """
    scale = _check_scale(scale)
    values = np.asarray(values, dtype=np.float64)
    channels = [str(c) for c in channels]
    if values.ndim != 2 or values.shape[1] != len(channels) or values.shape[0] < 1:
        raise ValueError(f"values must be (n_nodes, {len(channels)}) for {len(channels)} channels, got {values.shape}.")
    n_nodes = values.shape[0]
    counts = np.zeros(n_nodes, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    if counts.shape != (n_nodes,):
        raise ValueError(f"counts must hold one number per node ({n_nodes}), got shape {counts.shape}.")
    nodes = np.arange(1, n_nodes + 1)
    if ax is None and n_nodes > 20:  # narrower columns than the metacluster heatmap's: grids have 100 nodes or more
        _, ax = _figure_and_axes(None, (0.17 * n_nodes + 3.0, max(3.0, 0.26 * len(channels) + 2.8)))
    fig = _draw_heatmap(
        nodes,
        counts,
        values,
        channels,
        ax=ax,
        agg="median" if scale is None else "code",
        scale=scale,
        title=title if title is not None else "Channel intensity per SOM node",
        save=None,
        count_label="pixels in the image(s)",
    )
    ax = fig.axes[0]
    ax.set_xlabel("SOM node (boxed in the colour of its metacluster)" if node_metacluster is not None else "SOM node")
    ticks = ax.get_xticklabels()
    if node_metacluster is not None:
        node_metacluster = np.asarray(node_metacluster, dtype=np.int64)
        if node_metacluster.shape != (n_nodes,):
            raise ValueError(f"node_metacluster must hold one id per node ({n_nodes}), got {node_metacluster.shape}.")
        colours = _metacluster_colors(node_metacluster)
    else:
        colours = np.tile(to_rgba("white"), (n_nodes, 1))
    for tick, colour in zip(ticks, colours, strict=True):
        tick.set_color(_text_color(colour))
        tick.set_bbox({"facecolor": colour, "edgecolor": "none", "boxstyle": "round,pad=0.2"})
        if n_nodes > 40:
            tick.set_fontsize("xx-small")
    if n_nodes > 20:
        ax.tick_params(axis="x", labelrotation=90)
        for top in ax.child_axes:  # the pixels per node
            top.tick_params(axis="x", labelrotation=90)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------- cohorts


def metacluster_proportions(counts, fov_names, *, names=None, ax=None, title=None, save=None):
    """Stacked bars of the share of every metacluster in every FOV (image): one bar per FOV.

    Parameters
    ----------
    counts : array-like of int, shape (n_fovs, n_ids)
        Pixels per FOV (row) and **1-based** metacluster id (column ``k``; column 0, the background, is left out),
        e.g. ``np.bincount(labels.ravel(), minlength=n_ids)`` of every FOV's metacluster labels.
    fov_names : list of str
        Names of the FOVs, one per row of ``counts``.
    names : mapping of int to str or None, default=None
        Names of metaclusters by 1-based id, added to their legend entries.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the FOVs.
    title : str or None, default=None
        Title of the axes; ``None`` says "Metacluster proportions per FOV".
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on; ``fig.axes[0].containers`` holds one bar container per metacluster with pixels, in id
        order, each with one bar per FOV (its height the metacluster's fraction of the FOV's labelled pixels).

    Examples
    --------
    >>> from pixelflowsom import pl
    >>> fig = pl.metacluster_proportions([[5, 1, 3], [0, 2, 2]], ["fov0", "fov1"])
    >>> [float(bar.get_height()) for bar in fig.axes[0].containers[0]]
    [0.25, 0.5]
    """
    names = _check_names(names)
    counts = np.asarray(counts)
    fov_names = [str(n) for n in fov_names]
    if counts.ndim != 2 or counts.shape[0] != len(fov_names) or counts.shape[0] < 1:
        raise ValueError(
            f"counts must be (n_fovs, n_ids) with one row per FOV ({len(fov_names)}), got shape {counts.shape}."
        )
    if counts.dtype.kind not in "iuf" or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("counts must be finite non-negative numbers of pixels.")
    labelled = counts[:, 1:].astype(np.float64)
    totals = labelled.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(totals > 0, labelled / np.where(totals > 0, totals, 1.0), 0.0)
    present = np.flatnonzero(labelled.sum(axis=0) > 0) + 1
    entries = [f"metacluster {_metacluster_label(k, names)}" for k in present]
    longest = max(map(len, fov_names))
    figsize = (max(3.5, 0.45 * len(fov_names) + 1.5) + _legend_width(entries), 4.0 + 0.06 * min(longest, 40))
    fig, ax = _figure_and_axes(ax, figsize)
    positions = np.arange(len(fov_names))
    bottom = np.zeros(len(fov_names))
    colours = _metacluster_colors(present)
    for k, colour, entry in zip(present, colours, entries, strict=True):
        ax.bar(positions, fractions[:, k - 1], bottom=bottom, color=colour, width=0.8, label=entry, linewidth=0)
        bottom += fractions[:, k - 1]
    ax.set_xticks(positions, labels=fov_names, rotation=90 if longest > 6 or len(fov_names) > 12 else 0)
    ax.set_xlim(-0.6, len(fov_names) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of the FOV's labelled pixels")
    ax.set_xlabel("FOV")
    ax.set_title(title if title is not None else "Metacluster proportions per FOV")
    if len(present) <= _MAX_LEGEND:
        _legend(ax, colours, entries)
    return _finish(fig, save)


def drift_heatmap(z, fov_names, channels, *, flagged=None, threshold=None, ax=None, title=None, save=None):
    """Heatmap of how far every FOV's channel medians lie from the cohort's: FOVs x channels of robust z-scores.

    Parameters
    ----------
    z : array-like of shape (n_fovs, n_channels)
        Robust z-score of every FOV's median of every channel against the cohort (see ``pixelflowsom.report`` for
        the rule); NaN is grey.
    fov_names : list of str
        Names of the FOVs, one per row.
    channels : list of str
        Names of the channels, one per column.
    flagged : array-like of bool, shape (n_fovs,), or None, default=None
        FOVs that drift: their names are red, bold and marked "(drift)".
    threshold : float or None, default=None
        The flagging threshold of ``|z|``: cells beyond it are outlined; ``None`` outlines none.
    ax : matplotlib.axes.Axes or None, default=None
        Axes to draw on; ``None`` makes a new figure sized to the table.
    title : str or None, default=None
        Title of the axes; ``None`` describes the values.
    save : str, path-like or None, default=None
        Save the figure there (format from the suffix, PNG without one, 150 dpi).

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure drawn on; the heatmap is ``fig.axes[0].images[0]``, its array ``(n_fovs, n_channels)``.

    Examples
    --------
    >>> from pixelflowsom import pl
    >>> fig = pl.drift_heatmap([[0.1, -0.2], [5.0, 0.3]], ["a", "b"], ["CD3", "CD20"], flagged=[False, True])
    >>> [tick.get_text() for tick in fig.axes[0].get_yticklabels()]
    ['a', 'b (drift)']
    """
    z = np.asarray(z, dtype=np.float64)
    fov_names = [str(n) for n in fov_names]
    channels = [str(c) for c in channels]
    if z.ndim != 2 or z.shape != (len(fov_names), len(channels)) or z.size == 0:
        raise ValueError(f"z must be (n_fovs, n_channels) = ({len(fov_names)}, {len(channels)}), got shape {z.shape}.")
    flagged = np.zeros(len(fov_names), dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    if flagged.shape != (len(fov_names),):
        raise ValueError(f"flagged must hold one bool per FOV ({len(fov_names)}), got shape {flagged.shape}.")
    finite = np.abs(z[np.isfinite(z)])
    limit = max(float(finite.max()) if finite.size else 1.0, float(threshold or 0.0) * 1.2, 1.0)
    labels = [f"{n} (drift)" if f else n for n, f in zip(fov_names, flagged, strict=True)]
    figsize = (
        max(4.0, 0.3 * len(channels) + 0.08 * max(map(len, labels)) + 2.5),
        max(2.5, 0.3 * len(fov_names) + 0.08 * max(map(len, channels)) + 1.5),
    )
    fig, ax = _figure_and_axes(ax, figsize)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    image = ax.imshow(z, cmap=cmap, norm=Normalize(-limit, limit), aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="robust z of the log channel median")
    ax.set_xticks(np.arange(len(channels)), labels=channels, rotation=90, fontsize="small")
    ax.set_yticks(np.arange(len(fov_names)), labels=labels, fontsize="small")
    for tick, drifts in zip(ax.get_yticklabels(), flagged, strict=True):
        if drifts:
            tick.set_color("tab:red")
            tick.set_fontweight("bold")
    if threshold is not None:
        for i, j in zip(*np.nonzero(np.abs(np.nan_to_num(z)) > threshold), strict=True):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))
    ax.set_xlabel("channel")
    ax.set_ylabel("FOV")
    ax.tick_params(length=0)
    if title is None:
        title = "Channel medians per FOV against the cohort" + (
            f"\n(outlined: |z| > {threshold:g})" if threshold is not None else ""
        )
    ax.set_title(title)
    return _finish(fig, save)
