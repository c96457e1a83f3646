"""The self-contained HTML report of a pixel clustering, from what its SpatialData store holds.

:func:`report` writes one HTML file (pictures embedded as PNG data URIs, inline CSS, no script, no network URL) about
the metacluster labels of a list of images (FOVs): their metacluster images, the channel medians per metacluster and
per SOM node, the SOM grid, the metacluster proportions per FOV, the FOVs whose channel medians drift from the
cohort's, the criterion of ``n_clusters="auto"`` and the run (parameters, training pixels, quantization error,
seconds per phase, versions, command). :func:`report_data` computes the numbers it shows.

Both read only the store: the labels elements, the images (once: ``n_samples`` pixels sampled with
:func:`~pixelflowsom.sample_pixels`, each chunk holding sampled pixels read once) and the record ``cluster`` keeps
with every metacluster labels element (:func:`pixelflowsom._store.read_label_attrs`).

Drift rule (constants below): for every FOV and channel, the median ``m`` of the FOV's sampled labelled pixels; then
``v = log(m + eps)`` with ``eps`` 1 % of the channel's largest FOV median (so a channel near 0 everywhere does not
flag on noise); its robust z-score against the cohort, ``z = (v - median(v)) / max(1.4826 * MAD(v), log(1.1))``
(the floor: FOVs whose medians differ by less than about 10 % are never far apart); a FOV drifts if any channel has
``|z| > 3.5``. With fewer than 3 FOVs no FOV is flagged.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np

from ._tables import label_counts

__all__ = ["ReportData", "report", "report_data"]

#: A FOV drifts when the robust z-score of the log median of one of its channels exceeds this in absolute value.
DRIFT_THRESHOLD = 3.5
#: Scales the median absolute deviation to the standard deviation of a normal distribution.
MAD_SCALE = 1.4826
#: Smallest scale of the robust z-score: log(1.1), a 10 % difference of the medians.
MIN_DRIFT_SCALE = math.log(1.1)
#: ``eps`` of ``log(median + eps)``, as a fraction of the channel's largest FOV median.
DRIFT_EPS_FRACTION = 0.01
#: Fewest FOVs a cohort needs for its FOVs to be flagged.
MIN_FOVS_FOR_DRIFT = 3
#: Most pixels of a metacluster image shown (larger ones are subsampled).
IMAGE_MAX_PIXELS = 250_000
#: Resolution of the embedded pictures.
REPORT_DPI = 72

#: The rule, as the report states it.
DRIFT_RULE = (
    f"For every FOV and channel, the median m of the FOV's sampled labelled pixels; v = log(m + eps), eps = "
    f"{DRIFT_EPS_FRACTION:g} x the channel's largest FOV median; z = (v - cohort median of v) / max({MAD_SCALE} x "
    f"MAD of v, log(1.1)). A FOV drifts if |z| > {DRIFT_THRESHOLD:g} for any channel. FOVs are flagged only in "
    f"cohorts of at least {MIN_FOVS_FOR_DRIFT} FOVs."
)


@dataclass(eq=False)
class ReportData:
    """The numbers the report shows; :func:`report_data` makes it.

    Parameters
    ----------
    images : list of str
        The image (FOV) names.
    cluster_labels, metacluster_labels : list of str
        The SOM-node and metacluster labels elements of every image.
    channels : list of str
        The channels sampled (the run's, else all channels of the first image).
    names : dict of int to str
        Metacluster names by 1-based id (empty when none are recorded).
    mapping : ndarray of int or None
        The recorded 1-based metacluster of every SOM node, or None without a record.
    run : dict or None
        What ``cluster`` recorded of the run (see ``pixelflowsom._cli.run_record``), or None.
    counts : ndarray of shape (n_images, n_ids + 1)
        Pixels per image and metacluster id (column 0: unlabelled), ``np.bincount`` of every metacluster labels
        element, padded to the largest id.
    node_counts : ndarray of shape (n_images, n_nodes + 1)
        The same for the SOM-node labels elements.
    sample_values : ndarray of shape (n, n_channels)
        The sampled pixels (:func:`~pixelflowsom.sample_pixels` of the images, ``n_samples`` in all).
    sample_image : ndarray of shape (n,)
        The image of every sampled pixel (position in ``images``).
    sample_metaclusters, sample_nodes : ndarray of shape (n,)
        The metacluster and SOM node (1-based, 0 unlabelled) of every sampled pixel, read from the labels.
    fov_medians : ndarray of shape (n_images, n_channels)
        Median of every channel over the FOV's sampled labelled pixels (NaN without any).
    drift_z : ndarray of shape (n_images, n_channels)
        Robust z-score of ``log(fov_medians + eps)`` against the cohort (see the module's drift rule).
    drifting : ndarray of bool, shape (n_images,)
        The FOVs that drift (none when ``drift_checked`` is False).
    drift_checked : bool
        Whether the cohort was large enough (``MIN_FOVS_FOR_DRIFT``) to flag FOVs.
    seconds : dict of str to float
        Seconds per phase: the run's, then those passed to :func:`report`.
    """

    images: list
    cluster_labels: list
    metacluster_labels: list
    channels: list
    names: dict
    mapping: np.ndarray | None
    run: dict | None
    counts: np.ndarray
    node_counts: np.ndarray
    sample_values: np.ndarray
    sample_image: np.ndarray
    sample_metaclusters: np.ndarray
    sample_nodes: np.ndarray
    fov_medians: np.ndarray
    drift_z: np.ndarray
    drifting: np.ndarray
    drift_checked: bool
    seconds: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- inputs


def _open(store):
    """Return ``(sdata, path or None)`` of a store path or a SpatialData object."""
    import spatialdata as sd

    if isinstance(store, str | os.PathLike):
        path = Path(store)
        if not path.exists():
            raise ValueError(f"The store {str(path)!r} does not exist.")
        return sd.read_zarr(path), path
    if isinstance(store, sd.SpatialData):
        return store, None if store.path is None else Path(store.path)
    raise TypeError(f"store must be a path to a SpatialData zarr store or a SpatialData object, got {type(store)}.")


def _names(given, images, suffix, what):
    if given is None:
        return [f"{name}{suffix}" for name in images]
    given = [given] if isinstance(given, str) else [str(n) for n in given]
    if len(given) != len(images):
        raise ValueError(f"{what} has {len(given)} name(s) for {len(images)} image(s); give one per image.")
    return given


def _check_inputs(sdata, images, cluster_labels, metacluster_labels):
    """Validate the names; return ``(images, cluster_labels, metacluster_labels)`` as lists of str."""
    images = [images] if isinstance(images, str) else [str(n) for n in images]
    if not images:
        raise ValueError("images is empty; name at least one image of the store.")
    if len(set(images)) != len(images):
        raise ValueError(f"images {images} name an image more than once.")
    missing = [name for name in images if name not in sdata.images]
    if missing:
        raise KeyError(f"Image(s) {missing} not found in the store; available images: {list(sdata.images)}.")
    clusters = _names(cluster_labels, images, "_som_clusters", "cluster_labels")
    metaclusters = _names(metacluster_labels, images, "_metaclusters", "metacluster_labels")
    missing = [name for name in clusters + metaclusters if name not in sdata.labels]
    if missing:
        raise KeyError(
            f"Labels element(s) {missing} not found in the store (run `pixelflowsom cluster` first, or name them); "
            f"available labels: {list(sdata.labels)}."
        )
    return images, clusters, metaclusters


def _label_array(element):
    """Return the full-resolution dask array of a labels element (DataArray or multiscale DataTree)."""
    from ._images import full_resolution

    return full_resolution(element).data


def _gather(array, index):
    """Return a ``dask.delayed`` of the labels at the pixels ``index`` (a tuple of coordinate arrays)."""
    import dask

    if not len(index[0]):
        return dask.delayed(np.zeros(0, dtype=np.int64))
    # Delayed, like the counts: dask.compute of dask arrays mixed with delayed objects returned its results out of
    # order here (dask 2026.1).
    return dask.delayed(np.asarray)(array.vindex[index])


def _record(sdata, metaclusters):
    """Return the record of the first metacluster element that has one (mapping, names, run), or ``{}``."""
    from ._store import read_label_attrs

    for name in metaclusters:
        record = read_label_attrs(sdata, name)
        if record:
            return record
    return {}


# ---------------------------------------------------------------------------------------------- numbers


def robust_drift(medians):
    """Robust z-scores of FOV channel medians against the cohort, by the module's drift rule.

    Parameters
    ----------
    medians : array-like of shape (n_fovs, n_channels)
        Median of every channel in every FOV (NaN where unknown).

    Returns
    -------
    z : ndarray of shape (n_fovs, n_channels)
        ``(v - median(v)) / max(1.4826 * MAD(v), log(1.1))`` per channel with ``v = log(medians + eps)``, ``eps``
        ``DRIFT_EPS_FRACTION`` times the channel's largest median (or 1e-12 if that is not positive).
    """
    medians = np.asarray(medians, dtype=np.float64)
    z = np.full(medians.shape, np.nan)
    for j in range(medians.shape[1]):
        column = medians[:, j]
        known = np.isfinite(column)
        if not known.any():
            continue
        top = float(np.max(column[known]))
        eps = DRIFT_EPS_FRACTION * top if top > 0 else 1e-12
        v = np.log(np.maximum(column[known], 0.0) + eps)
        centre = np.median(v)
        scale = max(MAD_SCALE * float(np.median(np.abs(v - centre))), MIN_DRIFT_SCALE)
        z[known, j] = (v - centre) / scale
    return z


def report_data(
    store, images, *, cluster_labels=None, metacluster_labels=None, n_samples=100_000, random_state=0, seconds=None
) -> ReportData:
    """Compute the numbers of :func:`report`, reading the images once (a sample of their pixels) and the labels.

    Parameters
    ----------
    store, images, cluster_labels, metacluster_labels, n_samples, random_state, seconds
        As in :func:`report`.

    Returns
    -------
    ReportData
        The counts, sampled pixels, medians and drift z-scores the report shows.

    Raises
    ------
    KeyError
        An image or labels element is missing, or an image lacks a channel of the run.
    ValueError, TypeError
        Bad arguments; a labels element whose shape differs from its image's.
    """
    import dask

    from ._images import full_resolution
    from ._sampling import sample_pixels

    sdata, _ = _open(store)
    images, clusters, metaclusters = _check_inputs(sdata, images, cluster_labels, metacluster_labels)
    arrays = [full_resolution(sdata.images[name]).rename(name) for name in images]
    labels = {name: _label_array(sdata.labels[name]) for name in clusters + metaclusters}
    for image, array, c, m in zip(images, arrays, clusters, metaclusters, strict=True):
        for name in (c, m):
            if tuple(labels[name].shape) != tuple(array.shape[1:]):
                raise ValueError(
                    f"Labels element {name!r} has shape {tuple(labels[name].shape)}, image {image!r} the spatial shape "
                    f"{tuple(array.shape[1:])}; they must match."
                )
    record = _record(sdata, metaclusters)
    run = record.get("run")
    all_channels = [str(c) for c in arrays[0].coords["c"].values] if "c" in arrays[0].coords else None
    channels = list(run["channels"]) if run and run.get("channels") else all_channels
    if channels is not None:
        for image, array in zip(images, arrays, strict=True):
            have = [str(c) for c in array.coords["c"].values] if "c" in array.coords else []
            missing = [c for c in channels if c not in have]
            if missing:
                raise KeyError(f"Image {image!r} lacks the run's channel(s) {missing}; it has {have}.")
    names = {int(k): str(v) for k, v in (record.get("names") or {}).items()}
    mapping = np.asarray(record["mapping"], dtype=np.int64) if record.get("mapping") is not None else None

    # The one read of the images.
    sample = sample_pixels(arrays, n_samples=n_samples, channels=channels, random_state=random_state)
    channels = [str(c) for c in sample.channels]
    coords = sample.coords_by_image()
    # One computation over the labels: counts of every element, labels at the sampled pixels.
    tasks = []
    for c, m, xy in zip(clusters, metaclusters, coords, strict=True):
        index = tuple(np.asarray(xy).T) if len(xy) else (np.zeros(0, dtype=np.int64),)
        for name in (m, c):
            tasks.append(label_counts(labels[name]))
            tasks.append(_gather(labels[name], index))
    results = dask.compute(*tasks)
    meta_counts, node_counts, sample_meta, sample_nodes = [], [], [], []
    for i in range(len(images)):
        meta_counts.append(results[4 * i])
        sample_meta.append(np.asarray(results[4 * i + 1], dtype=np.int64))
        node_counts.append(results[4 * i + 2])
        sample_nodes.append(np.asarray(results[4 * i + 3], dtype=np.int64))
    n_ids = max(len(c) for c in meta_counts)
    if names:
        n_ids = max(n_ids, max(names) + 1)
    if mapping is not None and mapping.size:
        n_ids = max(n_ids, int(mapping.max()) + 1)
    n_nodes = max(len(c) for c in node_counts)
    if run and run.get("xdim") and run.get("ydim"):
        n_nodes = max(n_nodes, int(run["xdim"]) * int(run["ydim"]) + 1)
    counts = np.stack([np.pad(c, (0, n_ids - len(c))) for c in meta_counts]).astype(np.int64)
    node_counts = np.stack([np.pad(c, (0, n_nodes - len(c))) for c in node_counts]).astype(np.int64)
    sample_meta = np.concatenate(sample_meta)
    sample_nodes = np.concatenate(sample_nodes)

    medians = np.full((len(images), len(channels)), np.nan)
    for i in range(len(images)):
        rows = (sample.image_index == i) & (sample_meta > 0)
        if rows.any():
            medians[i] = np.median(sample.values[rows], axis=0)
    drift_z = robust_drift(medians)
    checked = len(images) >= MIN_FOVS_FOR_DRIFT
    drifting = (
        (np.nan_to_num(np.abs(drift_z)) > DRIFT_THRESHOLD).any(axis=1) if checked else np.zeros(len(images), bool)
    )
    phase_seconds = dict((run or {}).get("seconds") or {})
    phase_seconds.update(seconds or {})
    return ReportData(
        images=images,
        cluster_labels=clusters,
        metacluster_labels=metaclusters,
        channels=channels,
        names=names,
        mapping=mapping,
        run=run,
        counts=counts,
        node_counts=node_counts,
        sample_values=sample.values,
        sample_image=sample.image_index,
        sample_metaclusters=sample_meta,
        sample_nodes=sample_nodes,
        fov_medians=medians,
        drift_z=drift_z,
        drifting=np.asarray(drifting, dtype=bool),
        drift_checked=checked,
        seconds=phase_seconds,
    )


# ---------------------------------------------------------------------------------------------- pictures


def _png(fig) -> str:
    """Encode the figure as a ``data:image/png;base64,...`` URI; closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        # pl sizes every figure to hold its legends and labels; a tight bounding box would draw each figure twice.
        fig.savefig(buffer, format="png", dpi=REPORT_DPI, metadata={"Software": None})
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _choice(record):
    """Rebuild the ``NClustersChoice`` of a run record's ``n_clusters_choice`` (or None)."""
    import pandas as pd

    from ._metacluster import NClustersChoice

    if not record:
        return None
    index = pd.Index([int(k) for k in record["k"]], name="k")
    criterion = pd.DataFrame(
        {
            c: np.array([np.nan if v is None else v for v in vs], dtype=np.float64)
            for c, vs in record["criterion"].items()
        },
        index=index,
    )
    stability = record.get("stability")
    if stability is not None:
        stability = pd.Series({int(k): float(v) for k, v in stability.items()}, name="stability").sort_index()
        stability.index.name = "k"
    return NClustersChoice(
        int(record["n_clusters"]), criterion, record["method"], np.zeros(0, dtype=np.int64), {}, stability
    )


def _figures(data: ReportData, sdata) -> dict:
    """Draw every picture of the report (data URIs); ``None`` for those the store cannot give."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "module://matplotlib_inline"):
        matplotlib.use("Agg")

    from . import pl

    names = data.names or None
    run = data.run or {}
    out = {"fovs": []}
    for image, name in zip(data.images, data.metacluster_labels, strict=True):
        fig = pl.metacluster_image(sdata.labels[name], names=names, max_pixels=IMAGE_MAX_PIXELS, title=image)
        out["fovs"].append({"name": image, "uri": _png(fig)})
    total = data.counts.sum(axis=0)
    labelled = data.sample_metaclusters > 0
    if labelled.any():
        out["heatmap"] = _png(
            pl.phenotype_heatmap(
                data.sample_values[labelled],
                data.sample_metaclusters[labelled],
                data.channels,
                counts=total,
                names=names,
                scale="zscore",
                title="Median per metacluster, z-scored",
            )
        )
    node_total = data.node_counts.sum(axis=0)
    n_nodes = len(node_total) - 1
    codes = np.asarray(run["codes"], dtype=np.float64) if run.get("codes") else None
    mapping = data.mapping if data.mapping is not None and len(data.mapping) == n_nodes else None
    if codes is not None and codes.shape == (n_nodes, len(data.channels)):
        values, what = codes, "SOM code per node, z-scored per channel"
    else:
        values = np.full((n_nodes, len(data.channels)), np.nan)
        for node in np.unique(data.sample_nodes[data.sample_nodes > 0]):
            values[node - 1] = np.median(data.sample_values[data.sample_nodes == node], axis=0)
        what = "median intensity per SOM node (sampled pixels), z-scored per channel"
    if n_nodes > 0:
        out["node_heatmap"] = _png(
            pl.node_heatmap(values, data.channels, node_metacluster=mapping, counts=node_total[1:], title=what)
        )
    xdim, ydim = run.get("xdim"), run.get("ydim")
    if mapping is not None and xdim and ydim and int(xdim) * int(ydim) == n_nodes:
        out["som_grid"] = _png(
            pl.som_grid_from_arrays(int(xdim), int(ydim), mapping, sizes=node_total[1:], names=names)
        )
    out["proportions"] = _png(pl.metacluster_proportions(data.counts, data.images, names=names))
    out["drift"] = _png(
        pl.drift_heatmap(
            data.drift_z,
            data.images,
            data.channels,
            flagged=data.drifting,
            threshold=DRIFT_THRESHOLD if data.drift_checked else None,
        )
    )
    choice = _choice(run.get("n_clusters_choice"))
    if choice is not None:
        out["criterion"] = _png(pl.n_clusters_criterion(choice))
    return out


# ---------------------------------------------------------------------------------------------- page


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _context(data: ReportData, figures: dict, store_name: str) -> dict:
    run = data.run or {}
    total = data.counts.sum(axis=0)
    n_labelled = int(total[1:].sum())
    metaclusters = [
        {
            "id": k,
            "name": data.names.get(k, ""),
            "pixels": int(total[k]),
            "percent": 100.0 * total[k] / n_labelled if n_labelled else 0.0,
            "colour": "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in _colour(k))),
        }
        for k in range(1, len(total))
        if total[k] > 0 or k in data.names
    ]
    fovs = []
    for i, image in enumerate(data.images):
        worst = np.nanargmax(np.abs(data.drift_z[i])) if np.isfinite(data.drift_z[i]).any() else None
        fovs.append(
            {
                "name": image,
                "drift": bool(data.drifting[i]),
                "pixels": int(data.counts[i].sum()),
                "unlabelled": int(data.counts[i, 0]),
                "sampled": int(np.sum(data.sample_image == i)),
                "max_z": None if worst is None else float(data.drift_z[i, worst]),
                "max_channel": None if worst is None else data.channels[worst],
            }
        )
    rows = []
    if run:
        rows = [
            ("images", ", ".join(run.get("images") or [])),
            ("channels", ", ".join(run.get("channels") or [])),
            ("SOM grid", f"{run.get('xdim')} x {run.get('ydim')}"),
            ("training pixels", _format(run.get("n_samples_fit"))),
            ("quantization error", _format(run.get("quantization_error"))),
        ]
    return {
        "store": store_name,
        "images": data.images,
        "channels": data.channels,
        "n_sampled": int(len(data.sample_image)),
        "figures": figures,
        "metaclusters": metaclusters,
        "fovs": fovs,
        "drifting": [f["name"] for f in fovs if f["drift"]],
        "drift_checked": data.drift_checked,
        "drift_rule": DRIFT_RULE,
        "drift_threshold": DRIFT_THRESHOLD,
        "min_fovs": MIN_FOVS_FOR_DRIFT,
        "has_run": bool(run),
        "run_rows": rows,
        "params": {k: _format(v) for k, v in (run.get("params") or {}).items()},
        "preprocessing": {k: _format(v) for k, v in (run.get("preprocessing") or {}).items()},
        "seconds": {k: f"{float(v):.2f}" for k, v in data.seconds.items()},
        "versions": {k: _format(v) for k, v in (run.get("versions") or {}).items()},
        "command": run.get("command"),
        "choice": run.get("n_clusters_choice"),
    }


def _colour(k):
    from .pl import _metacluster_colors

    return _metacluster_colors([k])[0][:3]


def _render(context) -> str:
    import jinja2

    template = files("pixelflowsom").joinpath("templates", "report.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(**context)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder and ``os.replace``."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would create it, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        with _suppress():
            os.unlink(temporary)
        raise


def _suppress():
    from contextlib import suppress

    return suppress(OSError)


def report(
    store,
    images,
    *,
    out=None,
    cluster_labels=None,
    metacluster_labels=None,
    n_samples=100_000,
    random_state=0,
    seconds=None,
) -> Path:
    """Write the self-contained HTML report of the metacluster labels of images in a SpatialData store.

    One HTML file, pictures embedded (PNG data URIs), inline CSS, no script and no network URL: it opens anywhere.
    It shows the metacluster image of every FOV (subsampled to at most 250,000 pixels), the z-scored median channel
    intensity per metacluster (with its pixels in the images) and per SOM node, the SOM grid with every node's
    metacluster and pixels, the metacluster proportions per FOV, the FOVs whose channel medians drift from the
    cohort's (by the rule of :data:`DRIFT_RULE`), the criterion against ``k`` of ``n_clusters="auto"``, and the run
    (parameters, training pixels, quantization error, seconds per phase, versions, command). What the store does not
    record (e.g. a run, for labels written by other tools) is left out.

    Parameters
    ----------
    store : str, path-like or spatialdata.SpatialData
        The zarr store (or a SpatialData object, backed or not) holding the images and their labels.
    images : str or list of str
        The image elements (FOVs).
    out : str, path-like or None, default=None
        The HTML file; ``None``: ``<store stem>_report.html`` next to the store.
    cluster_labels, metacluster_labels : list of str or None, default=None
        The SOM-node and metacluster labels elements of every image; ``None``: ``<image>_som_clusters`` and
        ``<image>_metaclusters``, as ``cluster`` names them.
    n_samples : int, default=100_000
        Pixels sampled over all images (in proportion to their pixels) for the medians and the drift.
    random_state : int, default=0
        Seed of the sample.
    seconds : dict of str to float or None, default=None
        Seconds of further phases to show beside the run's (e.g. the labelling, from the command line).

    Returns
    -------
    pathlib.Path
        The HTML file written (atomically: a temporary file, then ``os.replace``).

    Raises
    ------
    KeyError
        An image, a labels element or a channel of the run is missing (checked before any pixel is read).
    ValueError, TypeError
        Bad arguments, e.g. no ``out`` for a SpatialData object without a store.
    """
    sdata, path = _open(store)
    if out is None:
        if path is None:
            raise ValueError("The SpatialData object has no store; pass out=FILE.html.")
        out = path.parent / f"{path.stem}_report.html"
    out = Path(out)
    if not out.parent.is_dir():
        raise ValueError(f"The folder of out={str(out)!r} does not exist.")
    data = report_data(
        sdata,
        images,
        cluster_labels=cluster_labels,
        metacluster_labels=metacluster_labels,
        n_samples=n_samples,
        random_state=random_state,
        seconds=seconds,
    )
    figures = _figures(data, sdata)
    html = _render(_context(data, figures, path.name if path is not None else "(in memory)"))
    _write_atomic(out, html)
    return out
