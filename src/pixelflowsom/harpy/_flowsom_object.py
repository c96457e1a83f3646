"""A genuine :class:`flowsom.FlowSOM` built from an already computed SOM, without ``FlowSOM.__init__``.

``FlowSOM.__init__`` trains its own model and then fills the per-node tables of ``mudata["cluster_data"]`` with a pandas
loop over the nodes (``FlowSOM._update_derived_values`` and ``FlowSOM.test_outliers`` filter the whole sample once per
node and statistic), which is slow on big samples. :func:`build_flowsom` creates the instance with ``FlowSOM.__new__``,
reads the sample in with flowsom's own ``read_input`` (both in :mod:`pixelflowsom.harpy._flowsom_compat`, the one place
where flowsom's private API is used) and computes the same fields, values and dtypes, quirks included, with
:mod:`pixelflowsom.harpy._group_statistics`: the rows sorted once by ``(metacluster, node)``, then, a block of channels
at a time, those channels copied in that order and every statistic of every node (or metacluster) reduced from the copy.
Besides the sample (kept as ``cell_data.X``, not copied), the build needs about 100 MB of temporaries for a 1.34M x 40
sample, and keeps about 110 MB in ``cell_data.obs`` (mostly flowsom's ``obs_names``, one Python str per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
from flowsom import FlowSOM

from pixelflowsom.harpy._flowsom_compat import untrained_flowsom
from pixelflowsom.harpy._group_statistics import (
    GroupStats,
    RowOrder,
    count_above,
    gather_columns,
    group_stats,
    sort_rows,
)

__all__ = ["build_flowsom", "default_obs_names"]

#: Bytes of the copy of a block of channels in :func:`_cluster_stats`, when the channels of ``X`` are contiguous (a
#: block reads just its channels), and when ``X`` is row-major (every block reads the rows at random again: fewer,
#: larger blocks; 10M x 20 float32 rows here took 0.9 s in blocks of 7 channels, 2.1 s in one of 20 and 2.4 s in
#: blocks of 2).
_BLOCK_BYTES = 64 * 2**20
_ROW_MAJOR_BLOCK_BYTES = 256 * 2**20


def build_flowsom(
    X,
    var_names: Sequence[str],
    clustering,
    metaclustering,
    distances,
    codes,
    node_metacluster,
    *,
    model,
    xdim: int,
    ydim: int,
    n_clusters: int,
    rlen: int = 10,
    mst: int = 1,
    alpha: tuple[float, float] = (0.05, 0.01),
    seed: int | None = None,
    mad_allowed=4,
    obs: pd.DataFrame | Mapping | None = None,
    obsm: Mapping[str, np.ndarray] | None = None,
    obs_names: pd.Index | None = None,
) -> FlowSOM:
    """Build the :class:`flowsom.FlowSOM` that ``FlowSOM.__init__`` would build, from a computed clustering.

    The result is what ``FlowSOM(ad.AnnData(X, obs=obs, obsm=obsm), n_clusters, xdim=xdim, ...)`` gives when its
    model yields ``clustering``, ``metaclustering``, ``distances``, ``codes`` and ``node_metacluster``: the same
    instance attributes and the same ``mudata["cell_data"]`` and ``mudata["cluster_data"]`` (fields, values, dtypes,
    names), but without training a model and with the per-node tables computed vectorised.

    Parameters
    ----------
    X
        ``(n, p)`` values of the sampled pixels, the clustering channels only. Kept as is (dtype included) as
        ``cell_data.X``.
    var_names
        The ``p`` channel names.
    clustering
        ``(n,)`` 0-based SOM node of each row, in ``[0, xdim * ydim)``.
    metaclustering
        ``(n,)`` 0-based metacluster of each row.
    distances
        ``(n,)`` Euclidean distance of each row to the code of its node.
    codes
        ``(xdim * ydim, p)`` SOM codes; must equal ``model.codes``.
    node_metacluster
        ``(xdim * ydim,)`` 0-based metacluster of each node (flowsom's ``model._y_codes``).
    model
        Fitted flowsom model (e.g. :class:`flowsom.models.FlowSOMEstimator`) attached as ``fsom.model``. Its
        ``codes`` give the minimal spanning tree (``cluster_data.obsm["layout"]`` and ``cluster_data.uns["graph"]``,
        by ``FlowSOM.build_MST``).
    xdim, ydim
        SOM grid dimensions.
    n_clusters
        Number of metaclusters (``cell_data.uns["n_metaclusters"]``).
    rlen, mst, alpha, seed
        SOM training parameters, stored as the attributes of the same names.
    mad_allowed
        Number of median absolute deviations allowed by the outlier test (``cluster_data.uns["outliers"]``).
    obs
        Extra ``cell_data.obs`` columns, one value per row of ``X``, matched by position (its index is ignored:
        ``cell_data.obs_names`` are ``"0"``, ..., ``str(n - 1)``). flowsom's columns ``"clustering"``,
        ``"distance_to_bmu"`` and ``"metaclustering"`` come after these and replace extras of the same name, as
        they do in ``FlowSOM.__init__``.
    obsm
        Extra ``cell_data.obsm`` arrays (e.g. ``"spatial"``), ``n`` rows each.
    obs_names
        ``default_obs_names(n)``, if already made (it takes a second for 10M rows: the caller may make it while other
        work runs); made here otherwise.

    Returns
    -------
    flowsom.FlowSOM
        The FlowSOM object.

    Raises
    ------
    ValueError
        If the shapes disagree, labels are not integers or ``clustering`` is outside ``[0, xdim * ydim)``, the
        channel names are not unique, or ``model.codes`` differs from ``codes``.

    Notes
    -----
    flowsom's quirks are reproduced on purpose, since callers compare with what flowsom puts there:

    - ``cluster_data.obsm["cv_values"]``, ``"sd_values"`` and ``"mad_values"`` have ``p + 1`` columns, the first
      being the statistic of the ``clustering`` column itself (``0``, except the coefficient of variation of node 0,
      NaN because a zero mean becomes NaN). They are computed in float64 (the dtype of flowsom's frame of labels and
      values), with NaN values skipped, and are NaN on nodes that win no row.
    - ``cluster_data.uns["outliers"]`` reproduces ``FlowSOM.test_outliers`` comparing the 0-based labels with
      ``node + 1``: row ``i`` holds the statistics of the rows of node ``i + 1`` and the last row is all ``0``. Its
      distance columns are float64, or int64 when every row is ``0``, as pandas infers them from flowsom's lists.
    - ``cell_data.var["cols_used"]`` is an object column of Python bools, and ``mudata`` itself keeps its empty
      global ``obs``/``var`` (flowsom replaces the modalities without ``mudata.update()``).

    Only floating point sums may differ from flowsom's, in the last bits (for the means and standard deviations:
    numpy's pairwise sums along every node's values, which flowsom's ``np.nanstd(..., axis=0)`` adds in another
    order); medians and median absolute deviations are exact (the mean of the two middle values on even counts, as
    pandas and numpy).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2D array, got shape {X.shape}.")
    n, p = X.shape
    n_nodes = xdim * ydim
    names = pd.Index([str(v) for v in var_names], dtype=object)
    if len(names) != p:
        raise ValueError(f"var_names has {len(names)} names for {p} columns of X.")
    if not names.is_unique:
        raise ValueError("var_names must be unique.")
    clustering = _labels(clustering, "clustering", n)
    if clustering.min() < 0 or clustering.max() >= n_nodes:
        raise ValueError(f"clustering must lie in [0, xdim * ydim) = [0, {n_nodes}).")
    metaclustering = _labels(metaclustering, "metaclustering", n)
    node_metacluster = _labels(node_metacluster, "node_metacluster", n_nodes)
    distances = np.asarray(distances, dtype=np.float64)
    if distances.shape != (n,):
        raise ValueError(f"distances must have shape ({n},), got {distances.shape}.")
    codes = np.asarray(codes)
    if codes.shape != (n_nodes, p):
        raise ValueError(f"codes must have shape ({n_nodes}, {p}), got {codes.shape}.")
    model_codes = np.asarray(model.codes)
    if model_codes.shape != codes.shape or not np.array_equal(model_codes, codes, equal_nan=True):
        raise ValueError("model.codes must equal codes (the minimal spanning tree is built from model.codes).")

    if obs is not None:
        obs = pd.DataFrame(obs, copy=False)  # a new frame (the caller's keeps its index), the same columns
        if len(obs) != n:
            raise ValueError(f"obs has {len(obs)} rows for {n} rows of X.")
        obs.index = default_obs_names(n) if obs_names is None else obs_names
    # The obs names are unique by construction: anndata's check would hash every one (5 s for 10M rows).
    with ad.settings.override(check_uniqueness=False):
        adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=names), obsm=None if obsm is None else dict(obsm))

    # FlowSOM.__init__ without the model training: the same attributes, the same MuData, the same read_input
    fsom = untrained_flowsom(
        adata,
        model,
        mad_allowed=mad_allowed,
        xdim=xdim,
        ydim=ydim,
        rlen=rlen,
        mst=mst,
        alpha=alpha,
        seed=seed,
        n_clusters=n_clusters,
    )

    # FlowSOM._update_derived_values, vectorised
    cell = fsom.mudata["cell_data"]
    cell.obs["clustering"] = clustering
    cell.obs["distance_to_bmu"] = distances
    cell.uns["n_nodes"] = n_nodes
    cell.var["cols_used"] = np.array(col in fsom.cols_to_use for col in cell.var_names)  # object bools, as flowsom
    cell.uns["n_metaclusters"] = n_clusters
    cell.obs["metaclustering"] = metaclustering

    counts = np.bincount(clustering, minlength=n_nodes)
    stats = _cluster_stats(X, clustering, metaclustering, distances, counts, mad_allowed)
    cluster = ad.AnnData(stats.medians)
    cluster.var_names = cell.var_names
    cluster.obsm["cv_values"] = stats.cv_values
    cluster.obsm["sd_values"] = stats.sd_values
    cluster.obsm["mad_values"] = stats.mad_values
    cluster.obs["percentages"] = np.divide(counts, np.sum(counts))
    cluster.obs["metaclustering"] = node_metacluster
    cluster.uns["xdim"] = xdim
    cluster.uns["ydim"] = ydim
    cluster.obsm["codes"] = codes
    grid = np.meshgrid(np.arange(xdim), np.arange(ydim), indexing="ij")
    cluster.obsm["grid"] = np.stack(grid, axis=-1).reshape(-1, 2).astype(np.int64)
    cluster.uns["outliers"] = stats.outliers.reset_index()
    fsom.mudata.mod["cluster_data"] = cluster
    cluster.uns["metacluster_MFIs"] = pd.DataFrame(
        stats.metacluster_medians,
        index=pd.Index(stats.metaclusters, name="metaclustering"),
        columns=cell.var_names.copy(),
    )

    FlowSOM.build_MST(fsom)
    return fsom


def default_obs_names(n: int) -> pd.Index:
    """Return anndata's default obs names of ``n`` rows, ``"0"``, ``"1"``, ..., as flowsom's cell table has them.

    Made straight from the ints (pandas' ``astype(str)`` goes through a numpy array of fixed-width unicode first, 32
    bytes per row).
    """
    return pd.Index(np.fromiter(map(str, range(n)), dtype=object, count=n), dtype=object, copy=False)


def _labels(values, name: str, n: int) -> np.ndarray:
    """``values`` as the int64 labels flowsom's models give, checked to be ``n`` integers."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}.")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.array_equal(arr, np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}.")


class _ClusterStats(NamedTuple):
    """The statistics of the nodes and metaclusters that flowsom stores in ``cluster_data``."""

    medians: np.ndarray  # (n_nodes, p), X's float dtype (float64 for other dtypes), NaN on empty nodes
    cv_values: np.ndarray  # (n_nodes, p + 1) float64, column 0 for the clustering column
    sd_values: np.ndarray  # (n_nodes, p + 1) float64
    mad_values: np.ndarray  # (n_nodes, p + 1) float64
    outliers: pd.DataFrame  # FlowSOM.test_outliers' table
    metaclusters: np.ndarray  # (n_metaclusters,) int64, the metaclusters present, in order
    metacluster_medians: np.ndarray  # (n_metaclusters, p), dtype of medians


def _cluster_stats(X, clustering, metaclustering, distances, counts, mad_allowed) -> _ClusterStats:
    """Per-node and per-metacluster statistics, as flowsom has them, from one sort of the rows.

    The rows are ordered by ``(metacluster, node)`` and ``X`` is copied in that order, channel-major, in its float dtype
    (float64 for others), a block of channels at a time (:mod:`._group_statistics`), so that the copy does not double
    the sample in memory: at most ``_BLOCK_BYTES`` per block when the channels of ``X`` are contiguous,
    ``_ROW_MAJOR_BLOCK_BYTES`` when its rows are (each block reads the rows at random again). The NaN-skipping medians,
    median absolute deviations, means and standard deviations of every node and channel and the medians of every
    metacluster come from that block, the outlier table from the distances in the same order. ``counts`` are the
    numbers of rows of every node.

    flowsom computes the node medians with ``groupby("clustering").median()`` (float64, cast back to ``X``'s float
    dtype, as pandas does), the rest node by node on the float64 frame ``[clustering, X]`` with ``np.nanstd``,
    ``np.nanstd / np.nanmean`` (a zero mean made NaN) and ``scipy.stats.median_abs_deviation(nan_policy="omit")``
    (from float64 medians); nodes without rows get NaN. The clustering column (column 0 of the spread tables) is
    constant on a node: mean the node, standard deviation and MAD 0.
    """
    n_nodes = len(counts)
    n, p = X.shape
    out_dtype = X.dtype if X.dtype.kind == "f" else np.dtype(np.float64)
    metaclusters, metas = _dense_labels(metaclustering)
    order = sort_rows(clustering, n_nodes, metas, len(metaclusters))
    del metas

    filled = counts > 0
    medians = np.empty((n_nodes, p))
    means = np.full((n_nodes, p + 1), np.nan)
    sd_values = np.full((n_nodes, p + 1), np.nan)
    mad_values = np.full((n_nodes, p + 1), np.nan)
    metacluster_medians = np.empty((len(metaclusters), p))
    means[filled, 0] = np.flatnonzero(filled)
    sd_values[filled, 0] = 0.0
    mad_values[filled, 0] = 0.0
    # A block reads X's rows at random: cheap along contiguous channels (the transpose of a C-contiguous (p, n)
    # array, as sample_pixels returns the sample), about one cache miss per row and block otherwise: one block then.
    budget = _BLOCK_BYTES if X.strides[0] == X.itemsize else _ROW_MAJOR_BLOCK_BYTES
    block = max(1, budget // (out_dtype.itemsize * n))
    for c0 in range(0, p, block):
        c1 = min(p, c0 + block)
        columns = gather_columns(X, order.perm, slice(c0, c1), dtype=out_dtype)
        nodes = group_stats(columns, *order.node_pieces, mad=True, spread=True)
        medians[:, c0:c1] = nodes.median
        means[:, c0 + 1 : c1 + 1] = nodes.mean
        sd_values[:, c0 + 1 : c1 + 1] = nodes.sd
        mad_values[:, c0 + 1 : c1 + 1] = nodes.mad
        metacluster_medians[:, c0:c1] = group_stats(columns, *order.meta_pieces).median
        del columns
    means[means == 0] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        cv_values = sd_values / means

    sorted_distances = distances[order.perm]
    node_distances = group_stats(sorted_distances[None, :], *order.node_pieces, mad=True, maximum=True)
    outliers = _outliers(node_distances, counts, sorted_distances, order, mad_allowed)
    return _ClusterStats(
        medians=medians.astype(out_dtype, copy=False),
        cv_values=cv_values,
        sd_values=sd_values,
        mad_values=mad_values,
        outliers=outliers,
        metaclusters=metaclusters,
        metacluster_medians=metacluster_medians.astype(out_dtype, copy=False),
    )


def _dense_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct ``labels``, in order, and the index of every label among them (``np.unique``'s inverse)."""
    lo, hi = int(labels.min()), int(labels.max())
    if hi - lo > 2 * len(labels):  # sparse labels: sort them
        present, inverse = np.unique(labels, return_inverse=True)
        return present.astype(np.int64, copy=False), inverse.reshape(-1)
    shifted = labels - lo
    seen = np.bincount(shifted, minlength=hi - lo + 1) > 0
    return np.flatnonzero(seen) + lo, (np.cumsum(seen) - 1)[shifted]


def _outliers(node_distances: GroupStats, counts, sorted_distances, order: RowOrder, mad_allowed) -> pd.DataFrame:
    """``FlowSOM.test_outliers(mad_allowed)`` (without reference or channels), from the nodes' distance statistics.

    flowsom selects the rows of node ``cl`` with ``clustering == cl + 1`` on 0-based labels, so row ``i`` of the
    table describes node ``i + 1`` and the last row is ``0``. Per node it takes ``np.median`` and
    ``scipy.stats.median_abs_deviation`` (both NaN when a distance is NaN), ``np.max`` on the pandas Series (which
    skips NaN) and counts the distances above ``median + mad_allowed * mad``; an empty node gives integer ``0``.
    ``node_distances`` are the NaN-skipping statistics of the distances, ``sorted_distances`` the distances in the
    order of ``order``.
    """
    n_nodes = len(counts)
    has_nan = node_distances.count[:, 0] < counts
    median = np.where(has_nan, np.nan, node_distances.median[:, 0])
    mad = np.where(has_nan, np.nan, node_distances.mad[:, 0])
    maximum = node_distances.maximum[:, 0]

    # shift by one node: row i is node i + 1, the last row has no node
    shown = np.append(counts[1:] > 0, False)
    if shown.any():
        median_dist = np.where(shown, np.append(median[1:], 0.0), 0.0)
        mad_dist = np.where(shown, np.append(mad[1:], 0.0), 0.0)
        max_dist = np.where(shown, np.append(maximum[1:], 0.0), 0.0)
    else:  # flowsom's lists then hold the integer 0 only
        median_dist = mad_dist = max_dist = np.zeros(n_nodes, dtype=np.int64)
    thresholds = np.add(median_dist, np.multiply(mad_allowed, mad_dist))

    node_thresholds = np.concatenate([[np.nan], np.asarray(thresholds, dtype=np.float64)[:-1]])  # node 0: no row
    above = count_above(sorted_distances, *order.node_pieces, node_thresholds)
    n_outliers = np.append(above[1:], 0).astype(np.int64)
    return pd.DataFrame(
        {
            "median_dist": median_dist,
            "median_absolute_deviation": mad_dist,
            "threshold": thresholds,
            "number_of_outliers": n_outliers,
            "maximum_outlier_distance": max_dist,
        }
    )
