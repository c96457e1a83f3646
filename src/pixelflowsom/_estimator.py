"""The :class:`PixelFlowSOM` estimator: validation and orchestration only.

Sampling lives in :mod:`._sampling`, SOM training in :mod:`._som`, metaclustering in :mod:`._metacluster` and
labelling in :mod:`._inference`; this module validates input, chains them and stores the fitted state.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _images, _som
from ._compat import HasMethods, Interval, StrOptions, _check_feature_names, _check_n_features, _fit_context
from ._inference import SOMModel, label_image, label_table
from ._metacluster import default_metaclustering
from ._nearest import nearest_nodes
from ._sampling import sample_image, sample_indices, sample_size, take_rows

_OUTPUT_NAMES = np.array(["som_node", "metacluster"], dtype=object)


class TrainingSample(NamedTuple):
    """The pixels an image fit trained on (for :mod:`pixelflowsom.harpy`, which reports them)."""

    values: np.ndarray  #: (n, p) float64 channel values (a view of a channel-major array)
    coords: np.ndarray  #: (n, ndim) int64 array indices in their image
    image_index: np.ndarray  #: (n,) position of their image in the list
    nodes: np.ndarray  #: (n,) 0-based nearest SOM node
    distances: np.ndarray  #: (n,) Euclidean distance to that node


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
    channels : str, int, list or None, default=None
        Image input only: the channels to cluster on, by the labels of the images' ``c`` coordinate (as
        ``image.sel(c=channels)`` selects; ints are labels, not positions). ``None``: all channels of the first
        image. Every image, in ``fit`` and later, must have them.
    chunks : int, "auto", tuple of int or None, default=None
        Image input only: spatial chunks of the label images (``(y, x)`` or ``(z, y, x)`` sizes, one int for all
        spatial axes, or ``"auto"``); ``None`` keeps the image's chunks. The channel axis is always one chunk.
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
    labels_ : ndarray of shape (n_samples,), dask array or DataArray(s)
        0-based metacluster of every training row (a lazy dask array for dask input); for image input, the lazy
        1-based metacluster image (a list for a list of images), as :meth:`predict` returns it.
    n_samples_fit_ : int
        Number of rows the SOM was trained on.
    quantization_error_ : float
        Mean Euclidean distance of the training sample to its nearest code.
    n_iter_ : int
        Passes (online) or epochs (batch) run, summed over the ``mst`` phases.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features seen during fit, when they all are strings; for image input, the channel names.
    channels_ : list
        Image input only: the channel labels trained on, as they are selected from later images.
    sample_coords_ : list of ndarray
        Image input only: for every image, the ``(m_i, ndim)`` array indices ``([z,] y, x)`` of its sampled pixels
        that were trained on (pixels with a NaN channel are dropped from the sample).

    See Also
    --------
    flowsom.FlowSOM : The reference implementation.
    ConsensusClustering : R FlowSOM's consensus metaclustering.

    Notes
    -----
    **Tables** (numpy, pandas, 2D dask arrays ``(n_pixels, n_channels)``): labels are 0-based. ``predict`` returns
    metaclusters ``0..n_clusters-1``, ``transform`` the columns ``[som_node, metacluster]`` with nodes
    ``0..xdim*ydim-1``. Values must be finite.

    **Images** (:class:`xarray.DataArray` with dims ``("c", "y", "x")`` or ``("c", "z", "y", "x")``, numpy- or
    dask-backed, a multiscale ``DataTree`` standing for its ``scale0``, or a list of them): ``fit`` samples
    ``int(fraction * n_pixels)`` pixels of every image, with a seed derived from ``random_state`` and the image's
    position in the list, independent of the chunking; sampled pixels with a NaN channel are then dropped.
    ``predict`` and ``transform`` return lazy dask-backed label images following the spatialdata convention:
    1-based ids, 0 where any selected channel of the pixel is NaN (or infinite), in the smallest unsigned dtype
    holding the ids (the computed blocks have exactly the declared dtype). ``predict`` gives the metacluster image
    (ids ``1..n_clusters``); ``transform`` a stack with a leading ``label`` axis ``[som_node, metacluster]``
    (ids up to ``xdim*ydim``). A list of images gives a list of label images.

    Ties between equally near nodes go to the lowest node index, as :func:`numpy.argmin` does on float64
    distances.

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
        "channels": [str, Integral, "array-like", None],
        "chunks": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"}), tuple, None],
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
        channels=None,
        chunks=None,
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
        self.channels = channels
        self.chunks = chunks
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

    def _validate_images(self, X, *, reset):
        """Check image input and select its channels; returns ``(images, single)``.

        Everything about the images is checked here, before any pixel is read.
        """
        single = _images._is_single_image(X)
        images = [_images.check_image(image, i) for i, image in enumerate([X] if single else X)]
        if len({image.ndim for image in images}) > 1:
            described = ", ".join(f"{_images.image_name(im, i)}: {im.dims}" for i, im in enumerate(images))
            raise ValueError(
                f"All images must have the same dims, 2D ('c', 'y', 'x') or 3D ('c', 'z', 'y', 'x'); got {described}. "
                "Cluster 2D and 3D images separately."
            )
        if reset:
            labels = _images.channel_labels(images[0]) if self.channels is None else _images.channel_list(self.channels)
            if len(labels) == 0 or len({str(c) for c in labels}) != len(labels):
                raise ValueError(f"channels={self.channels!r} must name at least one channel, each once.")
        elif hasattr(self, "channels_"):
            labels = self.channels_
        elif hasattr(self, "feature_names_in_"):
            labels = list(self.feature_names_in_)
        else:
            labels = None
        selected = []
        for i, image in enumerate(images):
            if labels is None:
                # Fitted on a table without feature names: channels are matched by position.
                if image.sizes["c"] != self.n_features_in_:
                    raise ValueError(
                        f"Image {_images.image_name(image, i)} has {image.sizes['c']} channels, but PixelFlowSOM was "
                        f"fitted on {self.n_features_in_} features."
                    )
                selected.append(image)
            else:
                selected.append(_images.select_channels(image, labels, i))
        if reset:
            self.channels_ = labels
            self.feature_names_in_ = np.asarray([str(c) for c in labels], dtype=object)
            self.n_features_in_ = len(labels)
        return selected, single

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the SOM on a sample of the pixels of ``X`` and metacluster its nodes.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, or list of images
            Pixels (rows) by channels (columns), finite; or images (see Notes of the class).
        y : None
            Ignored.

        Returns
        -------
        self : PixelFlowSOM
            The fitted estimator.
        """
        self._fit(X)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def _fit_keeping_sample(self, X, trainer=None):
        """Fit on images and also return the training sample, a :class:`TrainingSample`.

        For :mod:`pixelflowsom.harpy`, which reports the sampled pixels (the estimator itself does not keep them)
        and may train with a flowsom model instead: ``trainer(sample)`` then returns ``(codes, node_metacluster)``.
        """
        return self._fit(X, keep_sample=True, trainer=trainer)

    def _fit(self, X, keep_sample=False, trainer=None):
        alpha = self._check_params()
        if not _images.is_image_input(X):
            return self._fit_table(X, alpha)
        images, single = self._validate_images(X, reset=True)
        n_pixels = [int(np.prod(image.shape[1:])) for image in images]
        if sum(sample_size(n, self.fraction) for n in n_pixels) < 1:
            raise ValueError(
                f"fraction={self.fraction} of the {sum(n_pixels)} pixels samples no pixel; raise fraction to at least "
                f"{1 / max(n_pixels):.3g}."
            )
        random_state = check_random_state(self.random_state)
        base_seed = int(random_state.randint(np.iinfo(np.int32).max))
        values, coords = [], []
        for i, image in enumerate(images):
            v, c = sample_image(image, self.fraction, np.random.SeedSequence([base_seed, i]))
            finite = np.isfinite(v).all(axis=1)
            if len(v) and not finite.any():
                raise ValueError(
                    f"All {len(v)} sampled pixels of image {_images.image_name(image, i)} have a NaN (or infinite) "
                    f"value in the selected channels {self.channels_}; select other channels, fix the image or "
                    "leave it out."
                )
            if not finite.all():
                v, c = v.T[:, finite].T, c[finite]
            values.append(v)
            coords.append(c)
        # The sampled values come channel-major ((n, p) views of (p, n) arrays): keep that layout, which the batch
        # SOM and the labelling read without a transposing copy.
        sample = values[0] if len(values) == 1 else np.concatenate([v.T for v in values], axis=1).T
        if trainer is None:
            nodes, distances = self._fit_sample(sample, alpha, random_state)
        else:
            codes, node_metacluster = trainer(sample)
            self.metaclustering_ = None
            nodes, distances = self._set_model(codes, node_metacluster, sample)
            self.n_iter_ = self.rlen * self.mst
        self.sample_coords_ = coords
        self.labels_ = self._label_images(images, single, layers="metacluster")
        if keep_sample:
            image_index = np.repeat(np.arange(len(images)), [len(c) for c in coords])
            return TrainingSample(sample, np.concatenate(coords), image_index, nodes, distances)
        return None

    def _fit_table(self, X, alpha):
        X = self._validate_table(X, reset=True)
        for attribute in ("channels_", "sample_coords_"):
            self.__dict__.pop(attribute, None)
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

    def _fit_sample(self, sample, alpha, random_state):
        """Train the SOM and the metaclustering on an in-memory, finite, float64 sample; set fitted attributes."""
        codes, n_iter = self._train_som(sample, alpha, random_state)
        self.metaclustering_ = self._fit_metaclustering(codes, random_state)
        self.n_iter_ = n_iter
        return self._set_model(codes, self.metaclustering_.labels_, sample)

    def _train_som(self, sample, alpha, random_state):
        n_nodes = self.xdim * self.ydim
        if sample.shape[0] < n_nodes:
            warnings.warn(
                f"Only {sample.shape[0]} rows were sampled for {n_nodes} SOM nodes: the initial codes are drawn with "
                "replacement. Raise fraction, pass more data or use a smaller grid.",
                UserWarning,
                stacklevel=4,
            )
        return _som.train_som(
            sample,
            self.xdim,
            self.ydim,
            rlen=self.rlen,
            mst=self.mst,
            alpha=alpha,
            som=self.som,
            random_state=random_state,
        )

    def _set_model(self, codes, node_metacluster, sample):
        """Adopt trained codes and their node-to-metacluster map; ``sample`` is what they were trained on.

        Returns the node of every sample row and its distance to it.
        """
        self.codes_ = np.asarray(codes, dtype=np.float64)
        self.node_metacluster_ = np.asarray(node_metacluster, dtype=np.int64)
        self.grid_ = _som.grid_coordinates(self.xdim, self.ydim)
        nodes, distances = nearest_nodes(sample, self.codes_, return_distances=True)
        self.quantization_error_ = float(distances.mean())
        self.n_samples_fit_ = sample.shape[0]
        return nodes, distances

    def _fit_som_only(self, sample):
        """Train only the SOM on a finite in-memory sample (for flowsom's cluster-model interface)."""
        self._validate_params()
        alpha = self._check_params()
        codes, self.n_iter_ = self._train_som(sample, alpha, check_random_state(self.random_state))
        self.codes_ = codes
        return self

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

    def _label_images(self, images, single, layers, payload=None):
        """Lazy label images; the payload enters the graph once (a ``Delayed``, or a scattered ``Future``)."""
        import dask

        if payload is None:
            payload = dask.delayed(self._payload(), pure=True)
        n_meta = max(self.n_clusters, int(self.node_metacluster_.max()) + 1)
        n_ids = n_meta if layers == "metacluster" else max(n_meta, self.codes_.shape[0])
        out = [label_image(im, payload, layers=layers, chunks=self.chunks, n_ids=n_ids) for im in images]
        return out[0] if single else out

    def predict(self, X):
        """Metacluster of every row: the metacluster of its nearest SOM node.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, or list of images
            Pixels by channels, with the features seen in ``fit``; or images with the fitted channels.

        Returns
        -------
        labels : ndarray, dask array, DataArray or list of DataArray
            For tables, 0-based metacluster labels (int64), lazy for a dask array. For images, the lazy 1-based
            metacluster image(s), 0 at NaN pixels.
        """
        check_is_fitted(self)
        if _images.is_image_input(X):
            return self._label_images(*self._validate_images(X, reset=False), layers="metacluster")
        return self._label(self._validate_table(X, reset=False), column=1)

    def transform(self, X):
        """SOM node and metacluster of every row.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, or list of images
            Pixels by channels, with the features seen in ``fit``; or images with the fitted channels.

        Returns
        -------
        labels : ndarray, dask array, DataArray or list of DataArray
            For tables, columns ``[som_node, metacluster]``, 0-based int64, lazy for a dask array. For images, lazy
            ``(2, [z,] y, x)`` stack(s) ``[som_node, metacluster]`` of 1-based ids, 0 at NaN pixels.
        """
        check_is_fitted(self)
        if _images.is_image_input(X):
            return self._label_images(*self._validate_images(X, reset=False), layers="both")
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
        """Get the names of the two output columns of :meth:`transform`.

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
