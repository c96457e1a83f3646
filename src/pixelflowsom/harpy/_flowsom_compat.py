"""The one place where private flowsom API is used: its models' fitted state and a ``FlowSOM`` built without training.

pixelflowsom computes the SOM and the metaclustering itself, then hands the caller the genuine flowsom objects that
``flowsom.FlowSOM(...)`` would have built. flowsom has no public way to make a fitted model from computed codes and
labels, nor a ``FlowSOM`` from a fitted model: ``BaseFlowSOMEstimator.fit`` records its state in private attributes
(``_is_fitted``, ``_y_codes``), and ``FlowSOM.__init__`` always trains. Keeping that knowledge here means a flowsom
release that changes it breaks one file, not the package. Each function names the public API to switch to once flowsom
has one.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
from flowsom import FlowSOM
from mudata import MuData

__all__ = ["mark_cluster_fitted", "mark_fitted", "untrained_flowsom"]


def mark_cluster_fitted(cluster_model) -> None:
    """Mark flowsom cluster model ``cluster_model`` fitted, as flowsom's own cluster models' ``fit`` does.

    Sets the private ``_is_fitted`` that ``BaseClusterEstimator.__sklearn_is_fitted__`` reads. Public alternative:
    none yet; switch to one if flowsom adds it.

    Parameters
    ----------
    cluster_model : flowsom.models.BaseClusterEstimator
        The cluster model, its ``codes`` set.
    """
    cluster_model._is_fitted = True


def mark_fitted(model, node_metacluster) -> None:
    """Put flowsom model ``model`` and its ``cluster_model`` in the fitted state ``fit_predict`` leaves them in.

    Sets the private attributes flowsom's ``fit_predict`` sets besides the public ones (which the caller sets): the
    cluster model's ``_is_fitted`` (what its ``__sklearn_is_fitted__`` reads), the model's metacluster of every node
    ``_y_codes`` (what its ``predict`` maps node labels with) and its ``_is_fitted`` (what its ``codes``,
    ``distances`` and label properties check). Public alternative: none yet; switch to a flowsom constructor or setter
    of a fitted model from codes and a node -> metacluster map, if flowsom adds one.

    Parameters
    ----------
    model : flowsom.models.BaseFlowSOMEstimator
        The model; its ``cluster_model`` has its ``codes``, ``labels_`` and ``distances`` already.
    node_metacluster : array-like of shape (n_nodes,)
        The 0-based metacluster of every SOM node.
    """
    mark_cluster_fitted(model.cluster_model)
    model._y_codes = np.asarray(node_metacluster)
    model._is_fitted = True


def untrained_flowsom(adata, model, *, mad_allowed, xdim, ydim, rlen, mst, alpha, seed, n_clusters) -> FlowSOM:
    """Return the ``FlowSOM`` that ``FlowSOM.__init__`` sets up before it trains: attributes set and ``adata`` read.

    The instance is made with ``FlowSOM.__new__``; it then has the attributes ``__init__`` sets (``cols_to_use``
    None, the arguments) and an empty ``mudata`` whose ``cell_data`` is then ``adata``, read in by flowsom's own
    ``read_input``. The caller fills in what ``FlowSOM._update_derived_values`` computes from the fitted model.
    Public alternative: none yet (``FlowSOM.__init__`` always trains ``model``); switch to a constructor from a fitted
    model if flowsom adds one.

    Parameters
    ----------
    adata : anndata.AnnData
        The sample, as ``FlowSOM``'s ``inp``.
    model : flowsom.models.BaseFlowSOMEstimator
        The fitted model, kept as ``fsom.model``.
    mad_allowed, xdim, ydim, rlen, mst, alpha, seed, n_clusters
        The arguments of ``FlowSOM.__init__`` of the same names, kept as its attributes.

    Returns
    -------
    flowsom.FlowSOM
        The instance, without ``cluster_data`` yet.
    """
    fsom = FlowSOM.__new__(FlowSOM)
    fsom.cols_to_use = None
    fsom.mad_allowed = mad_allowed
    fsom.xdim = xdim
    fsom.ydim = ydim
    fsom.rlen = rlen
    fsom.mst = mst
    fsom.alpha = alpha
    fsom.seed = seed
    fsom.n_clusters = n_clusters
    fsom.model = model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"From 0\.4 \.update\(\)", category=FutureWarning)
        fsom.mudata = MuData({"cell_data": ad.AnnData(), "cluster_data": ad.AnnData()})
    fsom.read_input(adata)
    return fsom
