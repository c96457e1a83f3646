"""The :class:`PixelFlowSOM` estimator: validation and orchestration only.

Sampling lives in :mod:`._sampling`, SOM training in :mod:`._som`, metaclustering in :mod:`._metacluster` and
labelling in :mod:`._inference`; this module validates input, chains them and stores the fitted state.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _som
from ._compat import HasMethods, Interval, StrOptions, _check_feature_names, _check_n_features, _fit_context
from ._inference import SOMModel, label_table, nearest_nodes
from ._metacluster import default_metaclustering
from ._sampling import sample_indices, sample_size, take_rows

_OUTPUT_NAMES = np.array(["som_node", "metacluster"], dtype=object)


def _is_dask_array(X) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        return False
    return isinstance(X, da.Array)


class PixelFlowSOM(ClusterMixin, TransformerMixin, BaseEstimator):
    """FlowSOM clustering of pixels: a self-organizing map, then metaclustering of its nodes.

    ``fit`` trains a ``xdim`` x ``ydim`` self-organizing map (SOM) on a random ``fraction`` of the rows, then groups
    the SOM nodes into ``n_clusters`` metaclusters. Every row is then labelled by its nearest node and that node's
    metacluster. This is the FlowSOM algorithm (Van Gassen et al. 2015) as R FlowSOM and the ``flowsom`` Python
    package define it, with fast kernels: a GEMM-shaped nearest-node search in float32 with exact float64
    tie-breaking, numba SOM training, and lazy blockwise labelling of dask arrays.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of metaclusters; at most ``xdim * ydim``.
    xdim, ydim : int, default=10
        Size of the SOM grid; the map has ``xdim * ydim`` nodes.
    rlen : int, default=10
        Number of passes over the training sample (per ``mst`` phase).
    mst : int, default=1
        Number of training phases. After each phase the neighbourhood becomes the hop distance along the minimum
        spanning tree of the codes, and the radius and learning-rate schedules are split over the phases.
    alpha : tuple of two floats, default=(0.05, 0.01)
        Start and end of the linearly decaying learning rate.
    fraction : float, default=0.1
        Fraction of the rows (pixels) to train on, in (0, 1]: ``int(fraction * n_rows)`` rows are drawn without
        replacement.
    som : {"online", "batch"}, default="online"
        SOM training algorithm. ``"online"`` is FlowSOM's single-sample SOM. ``"batch"`` runs ``rlen`` epochs of the
        batch SOM (every epoch assigns the whole sample with the matrix-multiply kernel and moves each code to the
        mean of the samples won by its grid neighbourhood): much faster on large samples, with a quantization error
        as low as the online SOM's.
    metaclustering : estimator or None, default=None
        Clusterer of the SOM codes with a ``fit_predict`` method. It is cloned, and its ``n_clusters`` parameter (if
        any) is set to ``n_clusters``. ``None`` uses what ``flowsom`` uses, average-linkage
        :class:`~sklearn.cluster.AgglomerativeClustering`; :class:`~pixelflowsom.ConsensusClustering` is R FlowSOM's
        consensus metaclustering.
    random_state : int, RandomState instance or None, default=None
        Controls the training sample, the initial codes, the order of the online updates and a random
        metaclustering model. Pass an int for reproducible results.

    Attributes
    ----------
    codes_ : ndarray of shape (xdim * ydim, n_features_in_)
        Learned SOM codes, one row per node, in FlowSOM's node order (node ``i`` at grid position
        ``(i // ydim, i % ydim)``).
    node_metacluster_ : ndarray of shape (xdim * ydim,)
        0-based metacluster of every SOM node: the node-to-metacluster map.
    grid_ : ndarray of shape (xdim * ydim, 2)
        Grid position ``(x, y)`` of every node.
    metaclustering_ : estimator
        The fitted metaclustering model.
    labels_ : ndarray of shape (n_samples,)
        0-based metacluster of every training row (a lazy dask array for dask input).
    n_samples_fit_ : int
        Number of rows the SOM was trained on.
    quantization_error_ : float
        Mean Euclidean distance of the training sample to its nearest code.
    n_iter_ : int
        Passes (online) or epochs (batch) run, summed over the ``mst`` phases.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features seen during fit, when they all are strings.

    See Also
    --------
    flowsom.FlowSOM : The reference implementation.
    ConsensusClustering : R FlowSOM's consensus metaclustering.

    Notes
    -----
    Labels of tabular input are 0-based: ``predict`` returns metaclusters ``0..n_clusters-1`` and ``transform``
    the columns ``[som_node, metacluster]``, nodes ``0..xdim*ydim-1``. Ties between equally near nodes go to the
    lowest node index, as :func:`numpy.argmin` does on float64 distances.

    Dask arrays stay lazy in ``predict`` and ``transform`` (one task per row chunk); ``fit`` reads only the chunks
    holding sampled rows.

    When fewer rows are sampled than the map has nodes, the initial codes are drawn with replacement (R FlowSOM
    would fail) and a warning says so.

    Examples
    --------
    >>> import numpy as np
    >>> from pixelflowsom import PixelFlowSOM
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(m, 0.1, size=(500, 3)) for m in (0, 1, 2)])
    >>> model = PixelFlowSOM(n_clusters=3, xdim=4, ydim=4, fraction=0.5, random_state=0).fit(X)
    >>> model.codes_.shape
    (16, 3)
    >>> np.bincount(model.labels_)
    array([500, 500, 500])
    >>> model.transform(X[:2])  # [som_node, metacluster] of the first two rows
    array([[2, 0],
           [3, 0]])
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "xdim": [Interval(Integral, 1, None, closed="left")],
        "ydim": [Interval(Integral, 1, None, closed="left")],
        "rlen": [Interval(Integral, 1, None, closed="left")],
        "mst": [Interval(Integral, 1, None, closed="left")],
        "alpha": ["array-like"],
        "fraction": [Interval(Real, 0, 1, closed="right")],
        "som": [StrOptions({"online", "batch"})],
        "metaclustering": [HasMethods(["fit_predict"]), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        xdim=10,
        ydim=10,
        rlen=10,
        mst=1,
        alpha=(0.05, 0.01),
        fraction=0.1,
        som="online",
        metaclustering=None,
        random_state=None,
    ):
        self.n_clusters = n_clusters
        self.xdim = xdim
        self.ydim = ydim
        self.rlen = rlen
        self.mst = mst
        self.alpha = alpha
        self.fraction = fraction
        self.som = som
        self.metaclustering = metaclustering
        self.random_state = random_state

    # ------------------------------------------------------------------ validation

    def _check_params(self):
        """Cross-parameter checks that ``_parameter_constraints`` cannot express; returns ``alpha`` as floats."""
        n_nodes = self.xdim * self.ydim
        if self.n_clusters > n_nodes:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of SOM nodes xdim * ydim = "
                f"{self.xdim} * {self.ydim} = {n_nodes}; lower n_clusters or enlarge the grid."
            )
        try:
            alpha = tuple(float(a) for a in self.alpha)
        except (TypeError, ValueError):
            alpha = ()
        if len(alpha) != 2 or not all(np.isfinite(a) and a > 0 for a in alpha):
            raise ValueError(
                f"alpha={self.alpha!r} must be two positive numbers (start, end) of the learning rate, "
                "e.g. alpha=(0.05, 0.01)."
            )
        return alpha

    def _validate_table(self, X, *, reset):
        """Validate a 2D table; numpy/pandas through scikit-learn, dask arrays lazily (shape and dtype only)."""
        if _is_dask_array(X):
            if X.ndim != 2:
                raise ValueError(
                    f"Expected a 2D dask array (n_pixels, n_channels), got one with shape {X.shape}; "
                    "reshape it, e.g. X.reshape(-1, n_channels)."
                )
            if X.dtype.kind not in "biuf":
                raise TypeError(f"Expected a numeric dask array, got dtype {X.dtype}; cast it with X.astype(float).")
            if reset and X.shape[0] < 2:
                raise ValueError(f"Found array with {X.shape[0]} sample(s) while a minimum of 2 is required.")
            _check_feature_names(self, X, reset=reset)
            _check_n_features(self, X, reset=reset)
            return X
        return validate_data(self, X, reset=reset, dtype="numeric", ensure_min_samples=2 if reset else 1)

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the SOM on a sample of the rows of ``X`` and metacluster its nodes.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features)
            Pixels (rows) by channels (columns). Must be finite.
        y : None
            Ignored.

        Returns
        -------
        self : PixelFlowSOM
            The fitted estimator.
        """
        alpha = self._check_params()
        X = self._validate_table(X, reset=True)
        n = X.shape[0]
        if sample_size(n, self.fraction) < 1:
            raise ValueError(
                f"fraction={self.fraction} of {n} rows samples no row; raise fraction to at least {1 / n:.3g}."
            )
        random_state = check_random_state(self.random_state)
        rows = sample_indices(n, self.fraction, random_state.randint(np.iinfo(np.int32).max))
        sample = take_rows(X, rows)
        if not np.isfinite(sample).all():
            raise ValueError("Input X contains NaN or infinity; remove or impute those rows before fitting.")
        self._fit_sample(sample, alpha, random_state)
        self.labels_ = self._label(X, column=1)
        return self

    def _fit_sample(self, sample, alpha, random_state):
        """Train the SOM and the metaclustering on an in-memory, finite, float64 sample; set fitted attributes."""
        n_nodes = self.xdim * self.ydim
        replace = sample.shape[0] < n_nodes
        if replace:
            warnings.warn(
                f"Only {sample.shape[0]} rows were sampled for {n_nodes} SOM nodes: the initial codes are drawn with "
                "replacement. Raise fraction, pass more data or use a smaller grid.",
                UserWarning,
                stacklevel=3,
            )
        codes = sample[random_state.choice(sample.shape[0], size=n_nodes, replace=replace)]
        nhbrdist = _som.grid_distances(self.xdim, self.ydim)
        n_iter = 0
        for phase, (radii, alphas) in enumerate(_som.radius_alpha_schedule(nhbrdist, alpha, self.mst)):
            if phase > 0:
                nhbrdist = _som.mst_distances(codes)
            if self.som == "online":
                codes, it = _som.online_som(
                    sample, codes, nhbrdist, self.rlen, alphas, radii, random_state, ydim=self.ydim if phase == 0 else 0
                )
            else:
                codes, it = _som.batch_som(sample, codes, nhbrdist, self.rlen, radii)
            n_iter += it

        self.metaclustering_ = self._fit_metaclustering(codes, random_state)
        self.node_metacluster_ = np.asarray(self.metaclustering_.labels_, dtype=np.int64)
        self.codes_ = codes
        self.grid_ = _som.grid_coordinates(self.xdim, self.ydim)
        _, dist = nearest_nodes(sample, codes, return_distances=True)
        self.quantization_error_ = float(dist.mean())
        self.n_samples_fit_ = sample.shape[0]
        self.n_iter_ = n_iter

    def _fit_metaclustering(self, codes, random_state):
        model = default_metaclustering() if self.metaclustering is None else clone(self.metaclustering)
        params = model.get_params()
        if "n_clusters" in params:
            model.set_params(n_clusters=self.n_clusters)
        if "random_state" in params:
            model.set_params(random_state=random_state.randint(np.iinfo(np.int32).max))
        if self.n_clusters == 1 and "n_clusters" in params:
            # One metacluster needs no clustering (and agglomerative clustering refuses a single node).
            model.labels_ = np.zeros(codes.shape[0], dtype=np.int64)
            return model
        labels = np.asarray(model.fit_predict(codes))
        if labels.shape != (codes.shape[0],) or labels.min() < 0:
            raise ValueError(
                f"metaclustering={model!r} must label every SOM node with a cluster >= 0, got labels "
                f"{np.unique(labels)}."
            )
        model.labels_ = labels
        return model

    # ------------------------------------------------------------------ labelling

    def _payload(self) -> SOMModel:
        """Return the immutable model that labelling ships to workers."""
        return SOMModel(self.codes_, self.node_metacluster_)

    def _label(self, X, column):
        return label_table(X, self._payload(), column=column)

    def predict(self, X):
        """Metacluster of every row: the metacluster of its nearest SOM node.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features)
            Pixels by channels, with the features seen in ``fit``.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
            0-based metacluster labels (int64); lazy for a dask array.
        """
        check_is_fitted(self)
        return self._label(self._validate_table(X, reset=False), column=1)

    def transform(self, X):
        """SOM node and metacluster of every row.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features)
            Pixels by channels, with the features seen in ``fit``.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples, 2)
            Columns ``[som_node, metacluster]``, 0-based int64; lazy for a dask array.
        """
        check_is_fitted(self)
        return self._label(self._validate_table(X, reset=False), column=None)

    def fit_predict(self, X, y=None, **kwargs):
        """Fit, then return the metacluster of every row of ``X`` (``labels_``).

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features)
            Pixels by channels.
        y : None
            Ignored.
        **kwargs : dict
            Ignored; accepted for compatibility with :class:`~sklearn.base.ClusterMixin`.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
            0-based metacluster labels.
        """
        return self.fit(X).labels_

    def get_feature_names_out(self, input_features=None):
        """Names of the two output columns of :meth:`transform`.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Ignored except for validation against the features seen in ``fit``.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``["som_node", "metacluster"]``.
        """
        check_is_fitted(self)
        if input_features is not None:
            input_features = np.asarray(input_features, dtype=object)
            if len(input_features) != self.n_features_in_:
                raise ValueError(
                    f"input_features should have length equal to the number of features seen in fit "
                    f"({self.n_features_in_}), got {len(input_features)}."
                )
            if hasattr(self, "feature_names_in_") and not np.array_equal(input_features, self.feature_names_in_):
                raise ValueError("input_features is not equal to feature_names_in_.")
        return _OUTPUT_NAMES.copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []
        return tags
