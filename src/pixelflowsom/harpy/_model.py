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
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
from flowsom.models import BaseClusterEstimator, BaseFlowSOMEstimator, FlowSOMEstimator
from sklearn.utils.validation import check_is_fitted

from pixelflowsom import PixelFlowSOM
from pixelflowsom._nearest import nearest_nodes

#: Keywords of ``flowsom.FlowSOM`` itself (the rest belong to its models), and pixelflowsom's ``max_clusters``.
FLOWSOM_KEYWORDS = ("xdim", "ydim", "rlen", "mst", "alpha", "mad_allowed", "model", "max_clusters")
#: Cluster-model options pixelflowsom's SOM implements; any other option of the cluster model trains with flowsom.
_FAST_SOM_KEYWORDS = {"xdim", "ydim", "rlen", "mst", "alpha", "seed", "som"}
#: FlowSOM's defaults of the SOM parameters.
_SOM_DEFAULTS = {"xdim": 10, "ydim": 10, "rlen": 10, "mst": 1, "alpha": (0.05, 0.01)}


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
        self._is_fitted = True
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

    ``som`` and ``metaclustering`` are the parameters to give :class:`~pixelflowsom.PixelFlowSOM`; the rest builds
    the flowsom model of the returned ``flowsom.FlowSOM`` (:meth:`fitted_model`).
    """

    model_class: type
    xdim: int
    ydim: int
    rlen: int
    mst: int
    alpha: tuple
    som: object  #: "hybrid", "online", "batch", or an unfitted flowsom cluster model
    metaclustering: object  #: an unfitted flowsom metacluster model with n_clusters
    mad_allowed: object
    max_clusters: object  #: pixelflowsom's max_clusters, for n_clusters="auto"
    params: dict = field(default_factory=dict)  #: the keywords of model_class(...)

    def fitted_model(self, codes, node_metacluster, labels, distances, n_clusters):
        """Return a fitted ``model_class`` with these codes, in the state ``fit_predict`` of the sample leaves it.

        Parameters
        ----------
        codes, node_metacluster
            The trained codes and the 0-based metacluster of every node.
        labels, distances
            The 0-based nearest node of every training row and the distance to it (flowsom keeps both).
        n_clusters
            The number of metaclusters (the chosen one for ``n_clusters="auto"``).
        """
        params = self.params | {"n_clusters": n_clusters}
        if isinstance(self.som, str):
            model = self.model_class(cluster_model=PixelSOMEstimator, **params, som=self.som)
        else:
            model = self.model_class(**params)
        cluster = model.cluster_model
        # The state flowsom's cluster models are in after fit: codes, labels_ and distances of the training rows.
        cluster.codes = np.array(codes, dtype=np.float64)
        cluster.labels_ = np.asarray(labels)
        cluster.distances = np.asarray(distances)
        cluster._is_fitted = True
        model._y_codes = np.asarray(node_metacluster)
        model.cluster_labels_ = cluster.labels_
        model.labels_ = model._y_codes[cluster.labels_]
        model._is_fitted = True
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


def flowsom_options(kwargs: dict, n_clusters, random_state) -> FlowSOMOptions:
    """Split the drop-in's ``**kwargs`` as ``flowsom.FlowSOM`` would, checking them before any work.

    Raises
    ------
    TypeError
        An unknown keyword (naming it and listing the known ones), or ``model`` that is not a flowsom model class.
    ValueError
        ``xdim``, ``ydim`` or ``n_clusters`` not a positive integer (or ``"auto"`` for ``n_clusters``), more
        metaclusters than SOM nodes, or ``max_clusters`` not an integer from 2 to the number of SOM nodes.
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
    som_params = {name: kwargs.get(name, default) for name, default in _SOM_DEFAULTS.items()}
    checked = [("xdim", som_params["xdim"]), ("ydim", som_params["ydim"])]
    if not (isinstance(n_clusters, str) and n_clusters == "auto"):
        checked.append(("n_clusters", n_clusters))
    for name, value in checked:
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{name}={value!r} must be a positive integer" + (' or "auto".' if name == "n_clusters" else ".")
            )
    n_nodes = som_params["xdim"] * som_params["ydim"]
    if n_clusters != "auto" and n_clusters > n_nodes:
        raise ValueError(
            f"n_clusters={n_clusters} is larger than the number of SOM nodes xdim * ydim = {n_nodes}; lower "
            "n_clusters or enlarge the grid."
        )
    max_clusters = kwargs.get("max_clusters")
    if max_clusters is not None and (
        not isinstance(max_clusters, Integral) or isinstance(max_clusters, bool) or not 2 <= max_clusters <= n_nodes
    ):
        raise ValueError(
            f"max_clusters={max_clusters!r} must be an integer from 2 to the number of SOM nodes xdim * ydim = "
            f"{n_nodes}."
        )
    # flowsom's metacluster models need an n_clusters when built; PixelFlowSOM sets the chosen one on its clone.
    initial_clusters = n_clusters if n_clusters != "auto" else (max_clusters or min(20, n_nodes))
    cluster_options = {k: v for k, v in kwargs.items() if k in cluster_keys and k not in _SOM_DEFAULTS}
    metacluster_options = {k: v for k, v in kwargs.items() if k in metacluster_keys and k not in cluster_keys}
    params = som_params | {"seed": random_state, "n_clusters": initial_clusters} | metacluster_options
    flowsom_trains = "model" in kwargs or set(cluster_options) - _FAST_SOM_KEYWORDS
    if flowsom_trains:
        params |= {k: v for k, v in cluster_options.items() if k != "som"}
        som = model_class(**params).cluster_model
    else:
        som = cluster_options.get("som", PixelFlowSOM().som)  # the estimator's default
    metacluster_class = inspect.signature(model_class).parameters["metacluster_model"].default
    return FlowSOMOptions(
        model_class=model_class,
        som=som,
        metaclustering=metacluster_class(n_clusters=initial_clusters, **metacluster_options),
        mad_allowed=kwargs.get("mad_allowed", 4),
        max_clusters=max_clusters,
        params=params,
        **som_params,
    )


__all__ = ["FlowSOMOptions", "PixelSOMEstimator", "flowsom_options"]
