"""Metaclustering of SOM nodes into the final clusters.

Two choices, both scikit-learn estimators that :class:`pixelflowsom.PixelFlowSOM` clones and fits on its codes:

* the default, what ``flowsom`` 0.2 does: average-linkage agglomerative clustering of the codes
  (:func:`default_metaclustering`, a configured :class:`sklearn.cluster.AgglomerativeClustering`);
* :class:`ConsensusClustering`: consensus hierarchical clustering as R FlowSOM's ``metaClustering_consensus`` runs
  ``ConsensusClusterPlus`` (resample the nodes, cluster every resample, count how often two nodes end up together,
  then cluster ``1 - consensus``).

:func:`choose_n_clusters` chooses the number of metaclusters from the codes: by default the knee of the logarithm of the
pixel-weighted within-cluster sum of squares; by name, R FlowSOM's elbow of the within-cluster sum of squares
(``FlowSOM(maxMeta = ...)``) or ConsensusClusterPlus's relative change in the area under the consensus CDF. It also
reports how often resamples of the codes choose each number of clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import AgglomerativeClustering
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, validate_data

from ._compat import Interval, StrOptions, _fit_context, validate_params


def default_metaclustering() -> AgglomerativeClustering:
    """Return the metaclustering model ``flowsom`` uses by default: average-linkage agglomerative clustering."""
    return AgglomerativeClustering(linkage="average")


class ConsensusClustering(ClusterMixin, BaseEstimator):
    """Consensus hierarchical clustering (Monti et al. 2003), as R FlowSOM metaclusters SOM nodes.

    ``n_resamples`` times, a fraction ``resample_fraction`` of the rows is drawn without replacement and clustered
    into ``n_clusters`` groups by agglomerative clustering with ``linkage``. The consensus of two rows is the
    fraction of the resamples containing both in which they fell in the same group. The final labels cut the
    ``linkage`` hierarchical clustering of the distance ``1 - consensus`` into ``n_clusters`` groups. This is what
    ``ConsensusClusterPlus(reps=100, pItem=0.9, clusterAlg="hc", innerLinkage="average", finalLinkage="average")``
    computes for one ``k``.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters.
    n_resamples : int, default=100
        Number of resamples (``reps`` in ConsensusClusterPlus).
    resample_fraction : float, default=0.9
        Fraction of the rows in every resample (``pItem``).
    linkage : {"average", "complete", "single", "ward"}, default="average"
        Linkage of the clustering of every resample (``innerLinkage``). The final clustering of
        ``1 - consensus`` uses it too unless it is ``"ward"``, which needs Euclidean input; then ``"average"``.
    random_state : int, RandomState instance or None, default=None
        Draws the resamples.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        0-based cluster of every row.
    consensus_ : ndarray of shape (n_samples, n_samples)
        Consensus matrix: for each pair of rows, the fraction of the resamples holding both that put them together.
    n_features_in_ : int
        Number of features seen during fit.

    See Also
    --------
    sklearn.cluster.AgglomerativeClustering : The default (non-consensus) metaclustering.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import ConsensusClustering
    >>> X = np.r_[np.zeros((5, 2)), np.ones((5, 2))] + np.arange(10)[:, None] * 0.01
    >>> ConsensusClustering(n_clusters=2, n_resamples=20, random_state=0).fit_predict(X)
    array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_resamples": [Interval(Integral, 1, None, closed="left")],
        "resample_fraction": [Interval(Real, 0, 1, closed="right")],
        "linkage": [StrOptions({"average", "complete", "single", "ward"})],
        "random_state": ["random_state"],
    }

    def __init__(self, n_clusters=10, *, n_resamples=100, resample_fraction=0.9, linkage="average", random_state=None):
        self.n_clusters = n_clusters
        self.n_resamples = n_resamples
        self.resample_fraction = resample_fraction
        self.linkage = linkage
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the consensus matrix and cluster it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Rows to cluster (the SOM codes, for FlowSOM).
        y : None
            Ignored.

        Returns
        -------
        self : ConsensusClustering
            The fitted estimator.
        """
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        n = X.shape[0]
        if self.n_clusters > n:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of rows ({n}); "
                f"use n_clusters <= {n} or pass more rows."
            )
        random_state = check_random_state(self.random_state)
        size = _resample_size(n, self.resample_fraction)
        together = np.zeros((n, n))
        sampled = np.zeros((n, n))
        for _ in range(self.n_resamples):
            idx = np.sort(random_state.choice(n, size=size, replace=False))
            labels = np.full(n, -1)
            labels[idx] = self._cluster(X[idx], min(self.n_clusters, size))
            member = labels >= 0
            sampled += np.outer(member, member)
            together += (labels[:, None] == labels[None, :]) & member[:, None]
        consensus = np.divide(together, sampled, out=np.zeros_like(together), where=sampled > 0)
        np.fill_diagonal(consensus, 1.0)
        if self.n_clusters == 1:
            self.labels_ = np.zeros(n, dtype=np.int64)
        else:
            self.labels_ = _cluster_consensus(consensus, self.n_clusters, self.linkage)
        self.consensus_ = consensus
        return self

    def _cluster(self, X, n_clusters):
        if n_clusters == 1 or X.shape[0] < 2:
            return np.zeros(X.shape[0], dtype=np.int64)
        return AgglomerativeClustering(n_clusters=n_clusters, linkage=self.linkage).fit_predict(X)


# ---------------------------------------------------------------------------------------------- number of clusters

#: Weight of the two neighbours in R FlowSOM's smoothing of the WSS curve (``DetermineNumberOfClusters(smooth = 0.2)``).
_ELBOW_SMOOTH = 0.2
#: Histogram bins of the consensus CDF, as ConsensusClusterPlus's ``CDF(ml, breaks = 100)``.
_CDF_BINS = 100
#: Relative increase of the area under the consensus CDF below which one more cluster is not worth it (public: the
#: picture of pixelflowsom.pl.n_clusters_criterion draws it).
DELTA_AREA_THRESHOLD = 0.02
#: Consensus bounds of an ambiguous pair in the PAC (Şenbabaoğlu et al. 2014), as multiples of ``1 / _CDF_BINS``.
_PAC_BINS = (10, 90)


#: Fraction of the codes in every resample behind :attr:`NClustersChoice.stability` (ConsensusClusterPlus's ``pItem``).
STABILITY_RESAMPLE_FRACTION = 0.9
#: Linkages whose tree scipy builds as :class:`sklearn.cluster.AgglomerativeClustering` does (sklearn calls scipy for
#: ward, complete and average; single linkage is the minimum spanning tree in both), so that the stability re-clusters
#: every resample with one ``scipy.cluster.hierarchy.linkage``.
_SCIPY_LINKAGES = ("ward", "complete", "average", "single")
#: The within-cluster sum of squares is floored at this fraction of its value at ``k = 1`` before its logarithm, so that
#: a partition with no scatter left (every cluster one populated code) is a deep, finite knee.
_LOG_FLOOR = 1e-9


@dataclass(frozen=True, eq=False)
class NClustersChoice:
    """The number of metaclusters :func:`choose_n_clusters` chose, and the evidence it chose it on.

    Parameters
    ----------
    n_clusters : int
        The chosen number of clusters ``k``.
    criterion : pandas.DataFrame
        One row per ``k = 1 .. max_clusters`` (index ``"k"``). For the knee and the elbow: ``"wss"`` (within-cluster sum
        of squares of the codes clustered into ``k`` groups, pixel-weighted with ``sample_weight``). For the knee also
        ``"log_wss"`` (its natural logarithm, floored at ``1e-9`` times its value at ``k = 1``) and
        ``"knee_distance"`` (how far below the straight line from ``k = 1`` to ``k = max_clusters`` the ``"log_wss"``
        curve lies, both axes scaled to ``[0, 1]``; the knee is its maximum). For the elbow also ``"wss_smoothed"``
        (after R FlowSOM's smoothing) and ``"elbow_residual"`` (summed absolute residuals of the two straight lines
        split at ``k``; the elbow is its first minimum). For a :class:`ConsensusClustering`: ``"cdf_area"`` (area
        under the consensus CDF), ``"delta_area"`` (its relative increase from ``k - 1``; the area itself at
        ``k = 2``) and ``"pac"`` (proportion of ambiguous clustering, the pairs with consensus in ``(0.1, 0.9]``), all
        NaN at ``k = 1``. Columns that do not apply are absent.
    method : {"knee", "elbow", "delta_area"}
        The rule that chose ``n_clusters``.
    labels : ndarray of shape (n_codes,)
        0-based cluster of every code at ``n_clusters``: what the metaclustering gives for ``k = n_clusters`` with the
        same random state.
    cdf : dict of int to (ndarray, ndarray)
        For a :class:`ConsensusClustering`, ``k -> (x, cdf)`` for ``k = 2 .. max_clusters``: the consensus CDF at
        ``x = 0, 0.01, ..., 1`` (the fraction of node pairs, or of pixel pairs with ``sample_weight``, whose consensus
        is at most ``x``). Empty otherwise.
    stability : pandas.Series or None, default=None
        How stable the choice is: for every ``k = 1 .. max_clusters`` (index ``"k"``), the fraction of resamples of
        the codes for which the same rule chose ``k`` (every resample holds 90 % of the codes, with their weights,
        drawn without replacement, and is clustered again). A clear structure puts nearly all resamples on one
        ``k``; a choice between several plausible ``k`` spreads them out. None for the delta area, with
        ``n_resamples=0``, and for metaclusterings other than :class:`sklearn.cluster.AgglomerativeClustering` without
        connectivity on Euclidean distances (their re-clustering would cost ``n_resamples * max_clusters`` fits).
    """

    n_clusters: int
    criterion: pd.DataFrame
    method: str
    labels: np.ndarray
    cdf: dict
    stability: pd.Series | None = None

    def __getstate__(self):
        # Saved as arrays and plain values (pickle, joblib and skops files alike): a model file must not need
        # pandas' internal types, which skops cannot load safely.
        criterion = self.criterion
        stability = self.stability
        return {
            "n_clusters": int(self.n_clusters),
            "method": str(self.method),
            "labels": np.asarray(self.labels),
            "criterion_k": criterion.index.to_numpy(),
            "criterion_columns": [str(c) for c in criterion.columns],
            "criterion_values": criterion.to_numpy(dtype=np.float64),
            "cdf_k": [int(k) for k in self.cdf],
            "cdf": [(np.asarray(x), np.asarray(y)) for x, y in self.cdf.values()],
            "stability_k": None if stability is None else stability.index.to_numpy(),
            "stability": None if stability is None else stability.to_numpy(dtype=np.float64),
        }

    def __setstate__(self, state):
        if "criterion_values" not in state:  # pickled before choices were saved as arrays: the fields themselves
            for name, value in ({"stability": None} | state).items():
                object.__setattr__(self, name, value)
            return
        index = pd.Index(state["criterion_k"], name="k")
        stability = None
        if state["stability"] is not None:
            stability = pd.Series(state["stability"], index=pd.Index(state["stability_k"], name="k"), name="stability")
        values = {
            "n_clusters": state["n_clusters"],
            "criterion": pd.DataFrame(state["criterion_values"], index=index, columns=state["criterion_columns"]),
            "method": state["method"],
            "labels": state["labels"],
            "cdf": {k: tuple(xy) for k, xy in zip(state["cdf_k"], state["cdf"], strict=True)},
            "stability": stability,
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)  # a frozen dataclass


def choose_n_clusters(
    codes,
    metaclustering=None,
    *,
    max_clusters,
    method="auto",
    sample_weight=None,
    n_resamples=20,
    random_state=None,
) -> NClustersChoice:
    """Choose the number of metaclusters of SOM codes: the knee of the log WSS, R FlowSOM's elbow or the delta area.

    Three rules, picked by ``method``:

    * ``"knee"`` (the default): cluster the codes into ``k = 1 .. max_clusters`` groups and take the within-cluster
      sum of squares (WSS) of each, pixel-weighted with ``sample_weight``. Scale ``k`` and ``log(WSS)`` to
      ``[0, 1]`` (``k = 1`` at ``(0, 1)``, ``k = max_clusters`` at ``(1, 0)``) and return the ``k`` farthest below
      the straight line between the two ends, the "Kneedle" rule (Satopää et al. 2011) on the logarithm of the WSS.
      On the logarithm a split that separates two populations is a large step down whatever their scale, while
      splitting one population only shaves off a few percent, so with separate populations the knee falls at the
      last split that separates two of them.
    * ``"elbow"``, R FlowSOM's ``DetermineNumberOfClusters`` (what ``FlowSOM(maxMeta = max_clusters)`` runs): the same
      WSS, smoothed (every inner point becomes ``0.8`` times itself plus ``0.1`` times each neighbour, left to right,
      the left neighbour already smoothed), and its elbow: the ``k`` that minimises the summed absolute residuals of
      two least-squares lines, one through ``1 .. k - 1`` and one through ``k .. max_clusters``.
    * ``"delta_area"``, for a :class:`ConsensusClustering`: the consensus matrix of every ``k = 2 .. max_clusters``
      (each resample's hierarchy is cut at every ``k``, as ConsensusClusterPlus does, so all ``k`` cost about as much
      as one), the area under the CDF of its entries (ConsensusClusterPlus's 100-bin histogram) and the relative
      increase of that area from ``k - 1`` to ``k`` (the "delta area"). The chosen ``k`` is the first one after which
      another cluster increases the area by less than 2 %: the smallest ``k`` with ``delta_area[k + 1] < 0.02``
      (``max_clusters`` if there is none).

    For the knee and the elbow, ``n_resamples`` resamples of 90 % of the codes are clustered again and the same rule
    applied to each: :attr:`NClustersChoice.stability` is the fraction of them choosing every ``k``.

    Parameters
    ----------
    codes : array-like of shape (n_codes, n_features)
        The SOM codes (one row per node), finite.
    metaclustering : estimator or None, default=None
        The metaclustering: ``None`` (``flowsom``'s average-linkage agglomerative clustering), a
        :class:`ConsensusClustering`, or any clusterer with an ``n_clusters`` parameter and ``fit_predict`` (it is
        cloned and fitted once per ``k``, a ``distance_threshold`` cleared; an
        :class:`~sklearn.cluster.AgglomerativeClustering` without connectivity is fitted once and its tree cut at
        every ``k``).
    max_clusters : int
        Largest number of clusters tried; at least 2 and at most ``n_codes``. Neither the knee nor the elbow is ever
        ``max_clusters`` itself (a corner needs points on both sides): choose it well above the number you expect.
    method : {"auto", "knee", "elbow", "delta_area"}, default="auto"
        The rule. ``"auto"`` is ``"knee"`` (see Notes for the evidence). ``"elbow"`` with a
        :class:`ConsensusClustering` takes the WSS of its final clusterings, which is exactly what R
        ``FlowSOM(maxMeta = ...)`` does; so does ``"knee"``. ``"delta_area"`` needs a :class:`ConsensusClustering`.
    sample_weight : array-like of shape (n_codes,) or None, default=None
        Non-negative weight of every code, e.g. the number of pixels mapped to each SOM node. ``None`` weighs all codes
        equally, as R does. With weights, the WSS is that of the pixels (each replaced by its node's code) and the
        consensus CDF counts pixel pairs instead of node pairs, so nodes that no pixel maps to (the SOM places some
        between well separated phenotypes) do not count; the clusterings themselves are unweighted. At least two codes
        need a positive weight.
    n_resamples : int, default=20
        Resamples of the codes behind :attr:`NClustersChoice.stability` (0: none). They do not change the choice.
    random_state : int, RandomState instance or None, default=None
        Seeds the metaclustering if it has a ``random_state`` parameter (an integer drawn from it, as
        :class:`PixelFlowSOM <pixelflowsom.PixelFlowSOM>` seeds its metaclustering); ``None`` keeps the
        metaclustering's own ``random_state``. With a :class:`ConsensusClustering`, that seed draws the resamples, the
        same ones ``ConsensusClustering(n_clusters=k, random_state=seed)`` draws for every ``k``. It also draws the
        resamples of the stability; ``None`` draws them with seed 0, so that the same codes always give the same
        :class:`NClustersChoice`.

    Returns
    -------
    choice : NClustersChoice
        The chosen ``n_clusters``, the per-``k`` ``criterion`` table, the ``method`` used, the ``labels`` of the codes
        at the chosen ``k``, for a consensus clustering the ``cdf`` curves, and the ``stability`` of the choice (see
        :class:`NClustersChoice`). :func:`pixelflowsom.pl.n_clusters_criterion` draws it.

    Raises
    ------
    ValueError
        If ``max_clusters`` is not an integer in ``[2, n_codes]``, ``method`` is unknown or ``"delta_area"`` without
        a :class:`ConsensusClustering`, ``n_resamples`` is not a non-negative integer, ``sample_weight`` is not
        ``n_codes`` finite non-negative numbers with two positive, the codes are not a finite 2D array with two rows,
        or a :class:`ConsensusClustering` has invalid parameters.
    TypeError
        If ``metaclustering`` is not None, a :class:`ConsensusClustering` or an estimator with an ``n_clusters``
        parameter.

    See Also
    --------
    ConsensusClustering : The consensus metaclustering.
    pixelflowsom.pl.n_clusters_criterion : The picture of the choice.

    Notes
    -----
    The knee is the default because it chose the true number of phenotypes most often on a seeded family of synthetic
    images (``pixelflowsom._synthetic.synthetic_family``, run by ``benchmarks/bench_k.py``: 256 x 256 pixels, 3-12
    phenotypes, 8-40 channels, noise 0.1-0.4, equal, Zipf or rare (1.5 %) phenotype sizes, with and without shared
    lineage markers; ``PixelFlowSOM(fraction=0.2)``, nodes weighted by their training pixels, ``max_clusters=20``),
    counted where the metaclustering with ``n_clusters`` = truth recovers every phenotype (38 and 45 of two families
    of 80; in the others the phenotypes overlap, or average linkage spends clusters on nodes without pixels or on the
    bright tail of a phenotype before it separates two). The knee chose the truth in 38 / 38 and 43 / 45 of them, R
    FlowSOM's elbow in 25 / 38 and 32 / 45, the largest Calinski-Harabasz index in 38 / 38 and 40 / 45, the
    pixel-weighted silhouette in 36 / 38 and 42 / 45, the gap statistic in under half. With a
    :class:`ConsensusClustering`, the knee of its WSS chose right in 38 / 39 and 42 / 44, the delta area in 33 / 39
    and 36 / 44 (it misses small phenotypes).

    The WSS of real tissue has no such knee, and no rule on the average-linkage tree chose the same ``k`` over seeds:
    on the MIBI and CODEX images of ``benchmarks/bench_real.py`` the knee chose 4, 14, 5, 4, 15 and 7, 19, 18, 15,
    17 for seeds 0-4 (the elbow 4, 6, 5, 4, 6 and 7, 8, 7, 8, 7). Average linkage first splits off single outlying
    nodes, a number that depends on the seed, before the first large split; the curve then has a knee there and
    another one near 15. :attr:`NClustersChoice.stability` shows it: 5-40 % of the resamples agree with the choice
    on those images, against a median of 100 % (75 % or more in 9 cases of 10) on the synthetic ones. The delta
    area of a :class:`ConsensusClustering` was stable there (14-15 and 16-17).

    R FlowSOM smooths the WSS with the three-point moving average above, not with ``stats::smooth.spline``; the
    elbow does what R FlowSOM 2.x does (``R/4_metaClustering.R``). Its ``findElbow`` keeps the first of equal
    minima; so does this function, treating residuals within ``1e-9`` (relative) of the minimum as equal, so that an
    exactly piecewise-linear curve chooses its corner whatever the rounding. The knee likewise keeps the first of
    equal maxima.

    The CDF follows ConsensusClusterPlus 1.5x: the consensus of every pair of distinct codes (pairs never drawn
    together count as 0), a histogram with 100 right-closed bins on ``[0, 1]``, the area as the sum of the cumulative
    fractions at the right bin edges times the bin width, and ``delta_area[2] = area[2]``, ``delta_area[k] =
    (area[k] - area[k - 1]) / area[k - 1]``. ConsensusClusterPlus leaves the reading of the delta-area plot to the
    user ("the k after which there is no appreciable increase", Monti et al. 2003); the 2 % rule reads it that way.
    The area grows with the number of pairs that are apart, so splitting off a cluster of few nodes increases it
    little: small phenotypes are easily missed, which pixel weights (``sample_weight``) mitigate when the phenotype
    has many pixels.

    All rules take the codes only. With an agglomerative metaclustering the WSS of every ``k`` comes from one tree (the
    increase of the WSS at every merge, as Ward's criterion measures it), and every resample of the stability costs
    one scipy linkage: about 2 ms for the choice and 8 ms more for 20 resamples of 100 codes with
    ``max_clusters=20`` (a fit of 100 000 pixels takes about 0.5 s). ``ConsensusClustering(n_resamples=100)`` takes
    about 150 ms.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import choose_n_clusters
    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(5) * 4  # five well separated groups of 20 codes
    >>> codes = np.repeat(centres, 20, axis=0) + rng.normal(0, 0.3, size=(100, 5))
    >>> choice = choose_n_clusters(codes, max_clusters=12)
    >>> choice.n_clusters, choice.method
    (5, 'knee')
    >>> np.bincount(choice.labels)
    array([20, 20, 20, 20, 20])
    >>> float(choice.stability[5])  # the fraction of the resamples that chose 5 too
    1.0
    """
    codes = check_array(codes, dtype=np.float64, ensure_min_samples=2, input_name="codes")
    n = codes.shape[0]
    if not isinstance(max_clusters, Integral) or isinstance(max_clusters, bool) or not 2 <= max_clusters <= n:
        raise ValueError(
            f"max_clusters={max_clusters!r} must be an integer from 2 to the number of codes ({n}); "
            "try about twice the number of clusters you expect."
        )
    max_clusters = int(max_clusters)
    if method not in ("auto", "knee", "elbow", "delta_area"):
        raise ValueError(f"method={method!r} must be 'auto', 'knee', 'elbow' or 'delta_area'.")
    if not isinstance(n_resamples, Integral) or isinstance(n_resamples, bool) or n_resamples < 0:
        raise ValueError(f"n_resamples={n_resamples!r} must be a non-negative integer (0: no stability).")
    weight = _check_code_weight(sample_weight, n)
    model = _check_metaclustering(metaclustering, random_state)
    consensus = isinstance(model, ConsensusClustering)
    if method == "auto":
        method = "knee"
    if method == "delta_area" and not consensus:
        raise ValueError(
            f"method='delta_area' needs a ConsensusClustering metaclustering, got {type(model).__name__}; "
            "use method='knee' or metaclustering=ConsensusClustering()."
        )

    criterion = pd.DataFrame(index=pd.Index(np.arange(1, max_clusters + 1), name="k"))
    cdf = {}
    if consensus:
        fractions = _consensus_fractions(codes, max_clusters, model)
        area, pac, cdf = _consensus_curves(fractions, _pair_weight(weight, n))
        criterion["cdf_area"] = area
        criterion["delta_area"] = _delta_area(area)
        criterion["pac"] = pac

        def cluster(k):
            return _consensus_final_labels(fractions[k], k, model.linkage)

    else:

        def cluster(k):
            return np.asarray(clone(model).set_params(n_clusters=k).fit_predict(codes), dtype=np.int64)

    def labels_at(k):
        return np.zeros(n, dtype=np.int64) if k == 1 else cluster(k)

    stability = None
    if method == "delta_area":
        n_clusters = _first_below(criterion["delta_area"].to_numpy(), DELTA_AREA_THRESHOLD)
        return NClustersChoice(int(n_clusters), criterion, method, labels_at(n_clusters), cdf)

    rule = _knee if method == "knee" else _elbow
    if isinstance(model, AgglomerativeClustering) and model.connectivity is None:
        # One fit builds the whole tree; the WSS of every k follows from its merges.
        tree = clone(model).set_params(n_clusters=2, compute_full_tree=True).fit(codes).children_
        wss = _tree_wss(tree, codes, weight, max_clusters)
    else:
        wss = np.array([_within_cluster_sum_of_squares(codes, labels_at(k), weight) for k in criterion.index])
    n_clusters, columns = rule(wss)
    criterion["wss"] = wss
    for name, values in columns.items():
        criterion[name] = values
    if n_resamples and _reclusters_with_scipy(model):
        resample_state = check_random_state(0 if random_state is None else random_state)
        stability = _stability(codes, weight, max_clusters, model.linkage, rule, n_resamples, resample_state)
    return NClustersChoice(int(n_clusters), criterion, method, labels_at(n_clusters), cdf, stability)


def _knee(wss):
    """Knee of ``log(wss)`` (values at ``k = 1 .. K``): returns ``(k, {"log_wss": ..., "knee_distance": ...})``.

    Both axes scaled to ``[0, 1]``, the distance is that of every point below the straight line from ``k = 1`` to
    ``k = K`` (0 at both ends); the knee is the first ``k`` in ``2 .. K - 1`` at its maximum (``2`` when ``K = 2``).
    A curve that does not decrease has distance 0 everywhere (the knee is then 2).
    """
    wss = np.asarray(wss, dtype=np.float64)
    size = len(wss)
    scale = wss[0]
    if scale > 0:
        log_wss = np.log(np.maximum(wss, 0.0) + _LOG_FLOOR * scale)
    else:
        log_wss = np.zeros(size)
    drop = log_wss[0] - log_wss[-1]
    distance = np.zeros(size)
    if size > 2 and drop > 0:
        x = np.arange(size) / (size - 1)
        distance = (1.0 - x) - (log_wss - log_wss[-1]) / drop
        distance[[0, -1]] = 0.0
    inner = np.full(size, np.nan)
    inner[1 : max(size - 1, 2)] = -distance[1 : max(size - 1, 2)]
    return _first_minimum(inner), {"log_wss": log_wss, "knee_distance": distance}


def _elbow(wss):
    """R FlowSOM's elbow of ``wss``: returns ``(k, {"wss_smoothed": ..., "elbow_residual": ...})``."""
    smoothed = _flowsom_smooth(wss, _ELBOW_SMOOTH)
    residual = _two_line_residuals(smoothed)
    return _first_minimum(residual), {"wss_smoothed": smoothed, "elbow_residual": residual}


def _tree_wss(children, X, weight, max_clusters):
    """Weighted within-cluster sum of squares at ``k = 1 .. max_clusters`` of the cuts of a hierarchical tree.

    ``children`` are the merges in order, as :attr:`sklearn.cluster.AgglomerativeClustering.children_` or the first
    two columns of a scipy linkage: merge ``m`` joins nodes ``children[m]`` into node ``n + m`` (leaves are ``0 ..
    n - 1``). Cutting the last ``k - 1`` merges leaves ``k`` clusters. The WSS of ``k = max_clusters`` is computed from
    its clusters; undoing each of the last merges then adds ``w_a w_b / (w_a + w_b) |mean_a - mean_b|^2`` (Ward's
    increase; 0 when either side has zero weight), the same as :func:`_within_cluster_sum_of_squares` of every cut.
    """
    n = X.shape[0]
    children = np.asarray(children, dtype=np.int64)
    first_top = n - max_clusters  # merges first_top .. n - 2 are undone by the cut at max_clusters
    # Every node below the cut points to its parent, the cluster roots to themselves; pointer doubling then takes every
    # leaf to its cluster root.
    up = np.arange(2 * n - 1)
    below = np.arange(first_top)
    up[children[below, 0]] = n + below
    up[children[below, 1]] = n + below
    for _ in range(int(np.ceil(np.log2(max(n, 2)))) + 1):
        up = up[up]
    roots, labels = np.unique(up[:n], return_inverse=True)
    mass = np.bincount(labels, weights=weight, minlength=max_clusters)
    member = np.zeros((max_clusters, n))
    member[labels, np.arange(n)] = weight
    sums = member @ X
    means = np.divide(sums, mass[:, None], out=np.zeros_like(sums), where=mass[:, None] > 0)
    wss_at_max = float(np.sum(weight * np.sum((X - means[labels]) ** 2, axis=1)))
    # The top merges join the clusters: row i < max_clusters is cluster i, row max_clusters + j the node of top merge j.
    top = children[first_top:]
    rows = np.where(top < n + first_top, np.searchsorted(roots, top), max_clusters + top - n - first_top)
    inside = np.zeros((2 * max_clusters - 1, max_clusters), dtype=bool)
    inside[np.arange(max_clusters), np.arange(max_clusters)] = True
    for j, (a, b) in enumerate(rows):
        inside[max_clusters + j] = inside[a] | inside[b]
    node_mass = inside @ mass
    node_means = inside @ sums
    np.divide(node_means, node_mass[:, None], out=node_means, where=node_mass[:, None] > 0)
    mass_a, mass_b = node_mass[rows[:, 0]], node_mass[rows[:, 1]]
    gap = node_means[rows[:, 0]] - node_means[rows[:, 1]]
    both = (mass_a > 0) & (mass_b > 0)
    increase = np.zeros(len(rows))
    increase[both] = mass_a[both] * mass_b[both] / (mass_a[both] + mass_b[both]) * np.sum(gap[both] ** 2, axis=1)
    # top merge j leaves max_clusters - 1 - j clusters: undoing the merges from the top adds their increases
    return (wss_at_max + np.concatenate([[0.0], np.cumsum(increase)]))[::-1]


def _reclusters_with_scipy(model):
    """Whether scipy's linkage builds the tree of ``model``: AgglomerativeClustering, no connectivity, Euclidean."""
    return (
        isinstance(model, AgglomerativeClustering)
        and model.connectivity is None
        and model.metric == "euclidean"
        and model.linkage in _SCIPY_LINKAGES
    )


def _stability(codes, weight, max_clusters, linkage, rule, n_resamples, random_state):
    """Fraction of ``n_resamples`` resamples of the codes for which ``rule`` chose every ``k = 1 .. max_clusters``.

    Every resample draws ``STABILITY_RESAMPLE_FRACTION`` of the codes without replacement (at least
    ``max_clusters``), keeps their weights, builds the ``linkage`` tree with scipy and applies ``rule`` (``_knee`` or
    ``_elbow``) to the WSS of its cuts. Resamples with fewer than two positive weights choose nothing (they count in
    the denominator).
    """
    from scipy.cluster.hierarchy import linkage as scipy_linkage

    n = codes.shape[0]
    size = min(n, max(max_clusters, int(STABILITY_RESAMPLE_FRACTION * n)))
    counts = np.zeros(max_clusters + 1)
    for _ in range(n_resamples):
        idx = np.sort(random_state.permutation(n)[:size])
        if np.count_nonzero(weight[idx]) < 2:
            continue
        tree = scipy_linkage(codes[idx], method=linkage)[:, :2]
        counts[rule(_tree_wss(tree, codes[idx], weight[idx], max_clusters))[0]] += 1
    index = pd.Index(np.arange(1, max_clusters + 1), name="k")
    return pd.Series(counts[1:] / n_resamples, index=index, name="stability")


def _check_metaclustering(metaclustering, random_state):
    """Return an unfitted clone of the metaclustering (the default for None) whose ``n_clusters`` can be set.

    Seeds it with an integer drawn from ``random_state`` unless that is None; clears a ``distance_threshold``.
    """
    if metaclustering is None:
        return default_metaclustering()
    if isinstance(metaclustering, type) or not (
        hasattr(metaclustering, "get_params") and hasattr(metaclustering, "fit_predict")
    ):
        raise TypeError(
            f"metaclustering={metaclustering!r} must be None, a ConsensusClustering or a clusterer instance with "
            "fit_predict and an n_clusters parameter, e.g. sklearn.cluster.KMeans(n_init=10)."
        )
    model = clone(metaclustering)
    params = model.get_params()
    if "n_clusters" not in params:
        raise TypeError(
            f"metaclustering={metaclustering!r} has no n_clusters parameter, so the number of clusters cannot be "
            "varied; pass a clusterer such as AgglomerativeClustering, KMeans or ConsensusClustering."
        )
    if params.get("distance_threshold") is not None:
        model.set_params(distance_threshold=None)  # AgglomerativeClustering takes n_clusters or a threshold
    if random_state is not None and "random_state" in params:
        model.set_params(random_state=int(check_random_state(random_state).randint(np.iinfo(np.int32).max)))
    if isinstance(model, ConsensusClustering):
        validate_params(model)  # its fit is never called: check n_resamples, resample_fraction and linkage here
    return model


def _check_code_weight(sample_weight, n):
    """Validate ``sample_weight`` of ``n`` codes; returns float64 weights (ones for None)."""
    if sample_weight is None:
        return np.ones(n)
    weight = np.asarray(sample_weight, dtype=np.float64)
    if weight.shape != (n,) or not np.all(np.isfinite(weight)) or np.any(weight < 0) or np.count_nonzero(weight) < 2:
        raise ValueError(
            f"sample_weight must be {n} finite non-negative numbers, one per code, at least two of them positive; got "
            f"shape {weight.shape}."
        )
    return weight


def _within_cluster_sum_of_squares(X, labels, weight):
    """Weighted sum of squared distances of the rows of ``X`` to the weighted mean of their cluster.

    R FlowSOM's ``SSE`` with all weights 1. Clusters of zero total weight contribute nothing. Assumes validated input.
    """
    _, inverse = np.unique(labels, return_inverse=True)
    totals = np.bincount(inverse, weights=weight)
    sums = np.zeros((len(totals), X.shape[1]))
    np.add.at(sums, inverse, X * weight[:, None])
    means = np.divide(sums, totals[:, None], out=np.zeros_like(sums), where=totals[:, None] > 0)
    return float(np.sum(weight * np.sum((X - means[inverse]) ** 2, axis=1)))


def _flowsom_smooth(values, smooth):
    """R FlowSOM's smoothing: ``y[i] = (1 - s) y[i] + s/2 y[i - 1] + s/2 y[i + 1]`` left to right, in place.

    The left neighbour is already smoothed (R overwrites ``res[i]`` in its loop); the end points stay. Fewer than
    three values are returned unchanged.
    """
    y = np.array(values, dtype=np.float64)
    for i in range(1, len(y) - 1):
        y[i] = (1 - smooth) * y[i] + smooth / 2 * y[i - 1] + smooth / 2 * y[i + 1]
    return y


def _line_abs_residuals(x, y):
    """Sum the absolute residuals of the least-squares line through ``(x, y)`` (0 for fewer than 3 points)."""
    if len(x) < 3:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    slope = np.dot(xc, yc) / np.dot(xc, xc)
    return float(np.abs(yc - slope * xc).sum())


def _two_line_residuals(y):
    """R FlowSOM's ``findElbow`` criterion for every split of ``y[0 .. n-1]`` (at ``k = 1 .. n``).

    Entry ``k - 1`` is the summed absolute residuals of a line through points ``1 .. k - 1`` plus one through
    ``k .. n`` (1-based), for ``k = 2 .. n - 1``; NaN at ``k = 1`` and ``k = n``. With two values, entry ``k = 2`` is 0
    (R returns 2 then).
    """
    n = len(y)
    x = np.arange(1.0, n + 1)
    residual = np.full(n, np.nan)
    for k in range(2, max(n - 1, 2) + 1):
        residual[k - 1] = _line_abs_residuals(x[: k - 1], y[: k - 1]) + _line_abs_residuals(x[k - 1 :], y[k - 1 :])
    return residual


def _first_minimum(residual):
    """1-based position of the first minimum of ``residual`` (NaN ignored), ties within 1e-9 of its scale."""
    finite = np.isfinite(residual)
    best = np.min(residual[finite])
    tolerance = 1e-9 * max(np.max(np.abs(residual[finite])), np.finfo(np.float64).tiny)
    return int(np.flatnonzero(finite & (residual <= best + tolerance))[0]) + 1


def _first_below(delta, threshold):
    """Return the smallest ``k >= 2`` with ``delta`` at ``k + 1`` below ``threshold``, the last ``k`` if none.

    ``delta`` holds the values at ``k = 1, 2, ...`` (entry ``k`` is the value at ``k + 1``).
    """
    for k in range(2, len(delta)):
        if delta[k] < threshold:  # delta[k] is delta_area at k + 1
            return k
    return len(delta)


def _resample_size(n, fraction):
    """Rows in every resample of ``n`` rows: ``floor(fraction * n)``, at least 1 (ConsensusClusterPlus's ``pItem``)."""
    return max(1, int(fraction * n))


def _consensus_fractions(X, max_clusters, model):
    """Consensus of every pair of rows at every ``k = 2 .. max_clusters``, resampling as ``model.fit`` would.

    Every resample's hierarchy is built once and cut at every ``k``: a pair is together at ``k`` when the merge joining
    it is among the first ``size - k`` merges, as :class:`sklearn.cluster.AgglomerativeClustering` cuts. Returns an
    array of shape ``(max_clusters + 1, n_pairs)`` (rows 0 and 1 unused): row ``k`` is the fraction of the resamples
    drawing both rows of a pair (condensed order, as :func:`scipy.spatial.distance.pdist`) that put them in one
    cluster, 0 if none drew both; ``ConsensusClustering(n_clusters=k).fit(X).consensus_`` off its diagonal. Assumes
    validated input and a :class:`ConsensusClustering` ``model``.
    """
    from scipy.cluster.hierarchy import cophenet, linkage

    n = X.shape[0]
    n_pairs = n * (n - 1) // 2
    random_state = check_random_state(model.random_state)
    size = _resample_size(n, model.resample_fraction)
    # last_together[pair, m]: resamples in which m (capped at max_clusters + 1) is the largest k keeping the pair
    # together.
    last_together = np.zeros((n_pairs, max_clusters + 2), dtype=np.int32)
    sampled = np.zeros(n_pairs, dtype=np.int32)
    a, b = np.triu_indices(size, k=1)
    for _ in range(model.n_resamples):
        idx = np.sort(random_state.choice(n, size=size, replace=False))
        if size < 2:
            continue
        tree = linkage(X[idx], method=model.linkage)
        tree[:, 2] = np.arange(size - 1)  # merge order instead of height: the cophenetic "distance" is the merge index
        merge = cophenet(tree).astype(np.int64)
        i, j = idx[a], idx[b]
        pair = n * i - i * (i + 1) // 2 + (j - i - 1)
        last_together[pair, np.minimum(size - 1 - merge, max_clusters + 1)] += 1
        sampled[pair] += 1
    together = np.cumsum(last_together[:, ::-1], axis=1)[:, ::-1].T  # together[k]: resamples with m >= k
    together = together[: max_clusters + 1].astype(np.float64)
    sampled = sampled.astype(np.float64)
    return np.divide(together, sampled, out=np.zeros_like(together), where=sampled > 0)


def _consensus_curves(fractions, pair_weight):
    """Area under the consensus CDF, PAC and the CDF of every ``k = 2 ..`` of ``_consensus_fractions``.

    Returns ``(area, pac, cdf)``: ``area`` and ``pac`` at ``k = 1 .. max_clusters`` (NaN at 1), ``cdf`` maps ``k`` to
    ``(x, F(x))``.
    """
    n_k = len(fractions) - 1
    area, pac, cdf = np.full(n_k, np.nan), np.full(n_k, np.nan), {}
    for k in range(2, n_k + 1):
        x, curve = _consensus_cdf(fractions[k], pair_weight)
        cdf[k] = (x, curve)
        area[k - 1] = curve[1:].sum() / _CDF_BINS  # height at the right edge of every bin times its width
        pac[k - 1] = curve[_PAC_BINS[1]] - curve[_PAC_BINS[0]]
    return area, pac, cdf


def _pair_weight(weight, n):
    """Weight of every pair of codes in condensed order: the product of their weights."""
    i, j = np.triu_indices(n, k=1)
    return weight[i] * weight[j]


def _consensus_cdf(consensus, pair_weight):
    """ConsensusClusterPlus's consensus CDF: ``(x, F(x))`` at ``x = 0, 1/100, ..., 1`` of condensed ``consensus``.

    ``F(x)`` is the (pair-weighted) fraction of pairs with consensus at most ``x``; the bin edges are raised by
    ``1e-7`` of a bin, as R's ``hist`` does, so that a consensus equal to an edge falls in the bin below it.
    """
    order = np.argsort(consensus, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(pair_weight[order])])
    x = np.arange(_CDF_BINS + 1) / _CDF_BINS
    below = np.searchsorted(consensus[order], x + 1e-7 / _CDF_BINS, side="right")
    return x, cumulative[below] / cumulative[-1]


def _delta_area(area):
    """ConsensusClusterPlus's delta area of ``area`` (at ``k = 1, 2, ...``): NaN, ``area[2]``, then relative changes."""
    delta = np.full(len(area), np.nan)
    if len(area) >= 2:
        delta[1] = area[1]
        delta[2:] = (area[2:] - area[1:-1]) / area[1:-1]
    return delta


def _cluster_consensus(consensus, k, linkage):
    """Return the final labels of :class:`ConsensusClustering`: ``k`` clusters of the square ``consensus``.

    Agglomerative clustering of the distances ``1 - consensus`` (diagonal 1), with ``linkage`` (average for ward,
    which needs coordinates).
    """
    final_linkage = "average" if linkage == "ward" else linkage
    model = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage=final_linkage)
    return model.fit_predict(1.0 - consensus).astype(np.int64)


def _consensus_final_labels(consensus, k, linkage):
    """Cut the clustering of ``1 - consensus`` (condensed) into ``k`` clusters, as :class:`ConsensusClustering` does."""
    from scipy.spatial.distance import squareform

    square = squareform(consensus)
    np.fill_diagonal(square, 1.0)
    return _cluster_consensus(square, k, linkage)
