"""A flowsom cluster model backed by pixelflowsom: what ``fsom.model.cluster_model`` is after the drop-in.

``flowsom.models.BaseFlowSOMEstimator`` takes its SOM as a ``cluster_model`` class; :class:`PixelSOMEstimator`
has the interface of ``flowsom.models.SOMEstimator`` (same parameters, ``codes``, ``labels_``, ``distances``,
``fit``/``predict``/``fit_predict``) and runs pixelflowsom's kernels, so a ``FlowSOMEstimator`` built around it is
a genuine flowsom model that trains and predicts fast.
"""

from __future__ import annotations

import numpy as np
from flowsom.models import BaseClusterEstimator, FlowSOMEstimator
from sklearn.utils.validation import check_is_fitted

from pixelflowsom._estimator import PixelFlowSOM
from pixelflowsom._nearest import nearest_nodes


class PixelSOMEstimator(BaseClusterEstimator):
    """flowsom's ``SOMEstimator`` interface on pixelflowsom's SOM kernels.

    Parameters
    ----------
    xdim, ydim, rlen, mst, alpha, seed
        As ``flowsom.models.SOMEstimator`` (``seed`` is the random state).
    som : {"batch", "online"}, default="batch"
        The SOM algorithm, as :class:`pixelflowsom.PixelFlowSOM`'s ``som`` (the drop-in's default is the batch SOM).

    Attributes
    ----------
    codes : ndarray of shape (xdim * ydim, n_features)
        The SOM codes.
    labels_ : ndarray of shape (n_samples,)
        0-based node of every row of the last ``fit`` / ``predict`` input (flowsom reads it there).
    distances : ndarray of shape (n_samples,)
        Euclidean distance of every row of the last ``fit`` / ``predict`` input to its node.

    Notes
    -----
    Like flowsom's ``SOMEstimator``, ``predict`` stores ``labels_`` and ``distances`` on the model, because flowsom
    reads them from there. pixelflowsom's own labelling never calls it: it ships an immutable copy of the codes.
    """

    def __init__(self, xdim=10, ydim=10, rlen=10, mst=1, alpha=(0.05, 0.01), seed=None, som="batch"):
        super().__init__()
        self.xdim = xdim
        self.ydim = ydim
        self.rlen = rlen
        self.mst = mst
        self.alpha = alpha
        self.seed = seed
        self.som = som

    def fit(self, X, y=None):
        """Train the SOM on all rows of ``X``."""
        som = PixelFlowSOM(
            n_clusters=1,
            xdim=self.xdim,
            ydim=self.ydim,
            rlen=self.rlen,
            mst=self.mst,
            alpha=self.alpha,
            fraction=1.0,
            som=self.som,
            random_state=self.seed,
        )
        som._fit_som_only(np.asarray(X, dtype=np.float64))
        return self._set_fitted(som.codes_, np.asarray(X))

    def _set_fitted(self, codes, X, labels=None, distances=None):
        """Adopt trained ``codes``; label ``X`` with them (flowsom reads ``labels_`` and ``distances``).

        ``labels`` and ``distances``, when given, are those of ``X`` (already computed with these codes).
        """
        self.codes = np.array(codes, dtype=np.float64)
        self._is_fitted = True
        if labels is None or distances is None:
            self.predict(X)
        else:
            self.labels_ = np.asarray(labels)
            self.distances = np.asarray(distances)
        return self

    def predict(self, X, y=None):
        """Nearest node of every row (0-based), also stored in ``labels_`` with ``distances``."""
        check_is_fitted(self)
        labels, distances = nearest_nodes(np.asarray(X), self.codes, return_distances=True)
        self.labels_ = labels
        self.distances = distances
        return labels

    def fit_predict(self, X, y=None):
        """Fit, then return the node of every row."""
        return self.fit(X).labels_


def fitted_flowsom_model(model_class, *, codes, node_metacluster, X, labels=None, distances=None, **params):
    """Build a fitted flowsom model of ``model_class`` whose SOM is a fitted :class:`PixelSOMEstimator`.

    Parameters
    ----------
    model_class
        A ``flowsom.models.BaseFlowSOMEstimator`` subclass (``FlowSOMEstimator``).
    codes, node_metacluster
        The trained codes and the 0-based metacluster of every node.
    X
        The training sample (``labels_``, ``cluster_labels_`` and ``distances`` describe it, as after flowsom's
        ``fit_predict``).
    labels, distances
        The 0-based nearest node of every row of ``X`` and the distance to it, if already computed with ``codes``
        (otherwise they are computed).
    **params
        Parameters of the model, as ``flowsom.FlowSOM`` passes them (``xdim``, ``n_clusters``, ...).

    Returns
    -------
    flowsom.models.BaseFlowSOMEstimator
        The model, in the state ``fit_predict(X)`` leaves a flowsom model in.
    """
    model = model_class(cluster_model=PixelSOMEstimator, **params)
    model.cluster_model._set_fitted(codes, X, labels, distances)
    model._y_codes = np.asarray(node_metacluster)
    model.cluster_labels_ = model.cluster_model.labels_
    model.labels_ = model._y_codes[model.cluster_labels_]
    model._is_fitted = True
    return model


__all__ = ["FlowSOMEstimator", "PixelSOMEstimator", "fitted_flowsom_model"]
