"""Metaclustering of SOM nodes into the final clusters.

Two choices, both scikit-learn estimators that :class:`pixelflowsom.PixelFlowSOM` clones and fits on its codes:

* the default, what ``flowsom`` 0.2 does: average-linkage agglomerative clustering of the codes
  (:func:`default_metaclustering`, a configured :class:`sklearn.cluster.AgglomerativeClustering`);
* :class:`ConsensusClustering`: consensus hierarchical clustering as R FlowSOM's ``metaClustering_consensus`` runs
  ``ConsensusClusterPlus`` (resample the nodes, cluster every resample, count how often two nodes end up together,
  then cluster ``1 - consensus``).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster import AgglomerativeClustering
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from ._compat import Interval, StrOptions, _fit_context


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
        size = max(1, int(self.resample_fraction * n))
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
        final_linkage = "average" if self.linkage == "ward" else self.linkage
        if self.n_clusters == 1:
            self.labels_ = np.zeros(n, dtype=np.int64)
        else:
            model = AgglomerativeClustering(n_clusters=self.n_clusters, metric="precomputed", linkage=final_linkage)
            self.labels_ = model.fit_predict(1.0 - consensus).astype(np.int64)
        self.consensus_ = consensus
        return self

    def _cluster(self, X, n_clusters):
        if n_clusters == 1 or X.shape[0] < 2:
            return np.zeros(X.shape[0], dtype=np.int64)
        return AgglomerativeClustering(n_clusters=n_clusters, linkage=self.linkage).fit_predict(X)
