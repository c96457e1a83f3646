"""flowsom's models on pixelflowsom: the SOM and metaclustering a ``FlowSOM(**kwargs)`` call asks for, and its model.

``flowsom.FlowSOM(**kwargs)`` builds a ``flowsom.models.BaseFlowSOMEstimator`` subclass (``model=``, by default
``FlowSOMEstimator``) whose ``cluster_model`` trains the SOM and whose ``metacluster_model`` clusters the codes.
:func:`flowsom_options` splits the drop-in's ``**kwargs`` the same way and returns what
:class:`~pixelflowsom.PixelFlowSOM` needs: its ``som`` (pixelflowsom's own algorithm, or the flowsom cluster model
when the call asks for one) and its ``metaclustering``. :func:`fitted_flowsom_model` then builds the fitted flowsom
model that the returned ``flowsom.FlowSOM`` carries, around :class:`PixelSOMEstimator`, flowsom's cluster-model
interface on pixelflowsom's SOM.
"""

from __future__ import annotations

import inspect
from contextlib import suppress
from dataclasses import dataclass, field

import numpy as np
from flowsom.models import BaseClusterEstimator, BaseFlowSOMEstimator, FlowSOMEstimator
from sklearn.utils.validation import check_is_fitted

from pixelflowsom import PixelFlowSOM
from pixelflowsom._nearest import nearest_nodes
from pixelflowsom.harpy._flowsom_compat import mark_cluster_fitted, mark_fitted

#: Keywords of ``flowsom.FlowSOM`` itself (the rest belong to its models), and pixelflowsom's ``max_clusters``.
FLOWSOM_KEYWORDS = ("xdim", "ydim", "rlen", "mst", "alpha", "mad_allowed", "model", "max_clusters")
#: Cluster-model options pixelflowsom's SOM implements; any other option of the cluster model trains with flowsom.
_FAST_SOM_KEYWORDS = {"xdim", "ydim", "rlen", "mst", "alpha", "seed", "som"}
#: The SOM parameters flowsom's models and PixelFlowSOM share (their values: PixelFlowSOM's).
_SOM_PARAMETERS = ("xdim", "ydim", "rlen", "mst", "alpha")


class PixelSOMEstimator(BaseClusterEstimator):
    """flowsom's ``SOMEstimator`` interface on pixelflowsom's SOM: what ``fsom.model.cluster_model`` is by default.

    Parameters
    ----------
    xdim, ydim, rlen, mst, alpha, seed
        As ``flowsom.models.SOMEstimator`` (``seed`` is the random state).
    som : {"hybrid", "online", "batch"} or None, default=None
        The SOM algorithm, as :class:`pixelflowsom.PixelFlowSOM`'s ``som``; ``None`` is its default.

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
    reads them from there. pixelflowsom's own labelling never calls it.
    """

    def __init__(self, xdim=10, ydim=10, rlen=10, mst=1, alpha=(0.05, 0.01), seed=None, som=None):
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
        model = PixelFlowSOM(
            n_clusters=1,
            xdim=self.xdim,
            ydim=self.ydim,
            rlen=self.rlen,
            mst=self.mst,
            alpha=self.alpha,
            fraction=1.0,
            random_state=self.seed,
        )
        if self.som is not None:
            model.set_params(som=self.som)
        model.fit(X)
        self.codes = model.codes_
        mark_cluster_fitted(self)  # flowsom's private fitted state
        self.predict(X)
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


@dataclass
class FlowSOMOptions:
    """The drop-in's ``**kwargs``, split as ``flowsom.FlowSOM(**kwargs)`` splits them.

    ``estimator_params`` are parameters of :class:`~pixelflowsom.PixelFlowSOM` (the SOM's, and ``max_clusters``),
    given only where the call gives them: their defaults are the estimator's. :meth:`models` then gives the
    estimator's ``som`` and ``metaclustering``, and :meth:`fitted_model` the flowsom model of the returned
    ``flowsom.FlowSOM``.
    """

    model_class: type
    estimator_params: dict  #: PixelFlowSOM parameters given in **kwargs: xdim, ydim, rlen, mst, alpha, max_clusters
    som: object  #: "hybrid", "online", "batch" (pixelflowsom's SOM), or None: a flowsom cluster model trains
    mad_allowed: object
    cluster_options: dict = field(default_factory=dict)  #: other options of the flowsom cluster model
    metacluster_options: dict = field(default_factory=dict)  #: options of the flowsom metacluster model

    def _params(self, estimator, n_clusters) -> dict:
        """Keywords of ``model_class(...)``: the estimator's SOM parameters, seed, ``n_clusters`` and the options."""
        som_params = {name: getattr(estimator, name) for name in _SOM_PARAMETERS}
        som_params["alpha"] = tuple(som_params["alpha"])
        return som_params | {"seed": estimator.random_state, "n_clusters": n_clusters} | self.metacluster_options

    def models(self, estimator) -> tuple:
        """Return ``(som, metaclustering)``: the parameters to give ``estimator`` (a :class:`PixelFlowSOM`).

        ``som`` is pixelflowsom's algorithm, or the unfitted cluster model of ``model_class`` when the call asks flowsom
        to train; ``metaclustering`` is the unfitted metacluster model of ``model_class``. PixelFlowSOM validates its
        parameters when it samples, before any work, and sets its ``n_clusters`` (or the chosen one) on its clone of
        ``metaclustering``; the model is built here with ``n_clusters``, or, for ``"auto"``, the largest number tried.
        """
        n_clusters = estimator.n_clusters
        if n_clusters == "auto":
            n_clusters = estimator.max_clusters
            if n_clusters is None:  # PixelFlowSOM's: 20, or the number of nodes if smaller
                with suppress(TypeError):
                    n_clusters = min(20, estimator.xdim * estimator.ydim)
        metacluster_class = inspect.signature(self.model_class).parameters["metacluster_model"].default
        metaclustering = metacluster_class(n_clusters=n_clusters, **self.metacluster_options)
        if self.som is not None:
            return self.som, metaclustering
        params = self._params(estimator, n_clusters) | self.cluster_options
        return self.model_class(**params).cluster_model, metaclustering

    def fitted_model(self, estimator, labels, distances):
        """Return a fitted ``model_class`` in the state ``fit_predict`` of the sample leaves it.

        Parameters
        ----------
        estimator
            The fitted :class:`PixelFlowSOM`: its codes, node -> metacluster map and number of metaclusters.
        labels, distances
            The 0-based nearest node of every training row and the distance to it (flowsom keeps both).
        """
        params = self._params(estimator, estimator.n_clusters_)
        if self.som is not None:
            model = self.model_class(cluster_model=PixelSOMEstimator, **params, som=self.som)
        else:
            model = self.model_class(**params | self.cluster_options)
        cluster = model.cluster_model
        # The state flowsom's cluster models are in after fit: codes, labels_ and distances of the training rows.
        cluster.codes = np.array(estimator.codes_, dtype=np.float64)
        cluster.labels_ = np.asarray(labels)
        cluster.distances = np.asarray(distances)
        node_metacluster = np.asarray(estimator.node_metacluster_)
        mark_fitted(model, node_metacluster)  # flowsom's private fitted state
        model.cluster_labels_ = cluster.labels_
        model.labels_ = node_metacluster[cluster.labels_]
        return model


def _model_keywords(model_class, default) -> tuple[set[str], set[str]]:
    """Keywords of the cluster and metacluster models of a flowsom model class (what ``FlowSOM(**kwargs)`` takes).

    Without ``model=``, the cluster model is :class:`PixelSOMEstimator` (hence ``som``), which also accepts the options
    of flowsom's ``SOMEstimator`` (those it does not implement train with flowsom).
    """
    params = inspect.signature(model_class).parameters
    cluster = set(inspect.signature(params["cluster_model"].default).parameters)
    if default:
        cluster |= set(inspect.signature(PixelSOMEstimator).parameters)
    metacluster = params["metacluster_model"].default
    return cluster, set(inspect.signature(metacluster).parameters)


def flowsom_options(kwargs: dict) -> FlowSOMOptions:
    """Split the drop-in's ``**kwargs`` as ``flowsom.FlowSOM`` would, checking the keywords before any work.

    Values are not checked here: the SOM parameters and ``max_clusters`` go to :class:`~pixelflowsom.PixelFlowSOM`,
    which validates them before it reads a pixel.

    Raises
    ------
    TypeError
        An unknown keyword (naming it and listing the known ones), or ``model`` that is not a flowsom model class.
    """
    model_class = kwargs.get("model", FlowSOMEstimator)
    if not (inspect.isclass(model_class) and issubclass(model_class, BaseFlowSOMEstimator)):
        raise TypeError(
            f"model={model_class!r} must be a flowsom.models.BaseFlowSOMEstimator subclass, "
            "e.g. flowsom.models.BatchFlowSOMEstimator."
        )
    cluster_keys, metacluster_keys = _model_keywords(model_class, default="model" not in kwargs)
    allowed = set(FLOWSOM_KEYWORDS) | ((cluster_keys | metacluster_keys) - {"n_clusters", "seed"})
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"flowsom() got unexpected keyword argument(s) {unknown}; FlowSOM options are {sorted(allowed)} "
            "(the seed is random_state, the channels are channels)."
        )
    estimator_params = {name: kwargs[name] for name in (*_SOM_PARAMETERS, "max_clusters") if name in kwargs}
    cluster_options = {k: v for k, v in kwargs.items() if k in cluster_keys and k not in _SOM_PARAMETERS}
    metacluster_options = {k: v for k, v in kwargs.items() if k in metacluster_keys and k not in cluster_keys}
    flowsom_trains = "model" in kwargs or set(cluster_options) - _FAST_SOM_KEYWORDS
    som = None if flowsom_trains else cluster_options.pop("som", PixelFlowSOM().som)  # the estimator's default
    return FlowSOMOptions(
        model_class=model_class,
        estimator_params=estimator_params,
        som=som,
        mad_allowed=kwargs.get("mad_allowed", 4),  # flowsom's default
        cluster_options={k: v for k, v in cluster_options.items() if k != "som"},
        metacluster_options=metacluster_options,
    )


__all__ = ["FlowSOMOptions", "PixelSOMEstimator", "flowsom_options"]
