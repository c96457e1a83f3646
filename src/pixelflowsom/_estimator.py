"""The :class:`PixelFlowSOM` estimator: validation and orchestration only.

Sampling lives in :mod:`._sampling`, SOM training in :mod:`._som`, metaclustering in :mod:`._metacluster`, the
nearest-node kernel in :mod:`._nearest` and lazy labelling in :mod:`._inference`; this module validates input,
chains them and stores the fitted state.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _images, _som
from ._compat import (
    HasMethods,
    Interval,
    StrOptions,
    _check_feature_names,
    _check_n_features,
    _fit_context,
    _get_container_adapter,
    set_output_config,
    validate_params,
)
from ._inference import SOMModel, label_image, label_table
from ._log import phase
from ._metacluster import ConsensusClustering, choose_n_clusters, default_metaclustering
from ._nearest import nearest_nodes
from ._persistence import VersionedPickleMixin
from ._sampling import PixelSample, sample_indices, sample_pixels, sample_sizes, take_rows

_OUTPUT_NAMES = np.array(["som_node", "metacluster"], dtype=object)
#: Parameters of the estimator that a SOM estimator passed as ``som`` gets too, when it has them.
_SOM_PARAMS = ("xdim", "ydim", "rlen", "mst", "alpha")


#: Most training rows the percentiles of ``channel_percentiles_`` are taken over (evenly spaced in the sample).
PERCENTILE_ROWS = 100_000
#: The percentiles of ``channel_percentiles_``.
PERCENTILES = (1.0, 50.0, 99.0)


def _channel_percentiles(sample):
    """``PERCENTILES`` of every column of an in-memory sample, over at most ``PERCENTILE_ROWS`` evenly spaced rows."""
    step = max(1, -(-sample.shape[0] // PERCENTILE_ROWS))
    return np.percentile(np.asarray(sample[::step], dtype=np.float64), PERCENTILES, axis=0)


def _lazy_frame(out):
    """Return a lazy ``(n, 2)`` label array as a lazy dask DataFrame with the columns ``[som_node, metacluster]``."""
    import dask.dataframe as dd

    return dd.from_dask_array(out, columns=list(_OUTPUT_NAMES))


def _is_dask_array(X) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        return False
    return isinstance(X, da.Array)


class PixelFlowSOM(ClusterMixin, TransformerMixin, VersionedPickleMixin, BaseEstimator, auto_wrap_output_keys=None):
    """FlowSOM clustering of pixels: a self-organizing map, then metaclustering of its nodes.

    ``fit`` trains a ``xdim`` x ``ydim`` self-organizing map (SOM) on a random sample of the rows, then groups
    the SOM nodes into ``n_clusters`` metaclusters. Every row is then labelled by its nearest node and that node's
    metacluster. This is the FlowSOM algorithm (Van Gassen et al. 2015) as R FlowSOM and the ``flowsom`` Python
    package define it, with fast kernels: a GEMM-shaped nearest-node search in float32 with exact float64
    tie-breaking, numba SOM training, and lazy blockwise labelling of dask arrays.

    Parameters
    ----------
    n_clusters : int or "auto", default=10
        Number of metaclusters; at most ``xdim * ydim``. ``"auto"`` chooses it from the SOM codes with
        :func:`~pixelflowsom.choose_n_clusters` (up to ``max_clusters``, nodes weighted by their training pixels) with
        the rule ``n_clusters_method``: by default the knee of the log pixel-weighted within-cluster sum of squares,
        with how often resamples of the codes choose the same number. The choice is in ``n_clusters_`` and
        ``n_clusters_choice_``.
    xdim, ydim : int, default=10
        Size of the SOM grid; the map has ``xdim * ydim`` nodes.
    rlen : int, default=10
        Number of passes over the training sample (per ``mst`` phase).
    mst : int, default=1
        Number of training phases. After each phase the neighbourhood becomes the hop distance along the minimum
        spanning tree of the codes, and the radius and learning-rate schedules are split over the phases.
    alpha : tuple of two floats, default=(0.05, 0.01)
        Start and end of the linearly decaying learning rate.
    fraction : float or None, default=None
        Fraction of the rows (pixels) to train on, in (0, 1]: ``int(fraction * n_rows)`` rows (of every image) are
        drawn without replacement. ``None``: 0.1, unless ``n_samples`` is given.
    n_samples : int or None, default=None
        Train on this many rows (pixels) in all, drawn without replacement, instead of a fraction (all rows if there
        are fewer): the training sample, and so the memory of ``fit``, is then bounded whatever the size of the data.
        Several images share it in proportion to their pixels. Exclusive with ``fraction``.
    som : {"online", "hybrid", "batch"} or estimator, default="online"
        SOM training algorithm. ``"online"`` is FlowSOM's single-sample SOM (R FlowSOM's algorithm, in float32
        arithmetic: see :mod:`pixelflowsom._som`). ``"batch"`` runs ``rlen`` epochs of the
        batch SOM (every epoch assigns the whole sample with the matrix-multiply kernel and moves each code to the
        mean of the samples won by its grid neighbourhood): much faster on large samples, but a higher quantization
        error on real tissue (5-9% above the online SOM's on the images of ``benchmarks/bench_real.py``).
        ``"hybrid"``: the batch SOM, then three passes of the online SOM in its final regime, where only the winning
        node moves (learning rate from ``2 * alpha[1]`` to ``alpha[1]``): a lower quantization error than the online
        SOM's on the real images, at about a third of its training time, but metaclusters a little less stable across
        seeds on one of them (see ``docs/performance.md``). An estimator with
        ``flowsom``'s cluster-model interface (``fit(X)``, then a ``codes`` attribute of shape
        ``(xdim * ydim, n_features)``), e.g. ``flowsom.models.SOMEstimator()``, trains the SOM instead: it is cloned,
        its parameters ``xdim``, ``ydim``, ``rlen``, ``mst`` and ``alpha`` (those it has) are set to this
        estimator's, its own seed parameter is left as given, and only its codes are kept.
    max_clusters : int or None, default=None
        With ``n_clusters="auto"``: the largest number of metaclusters tried, from 2 to ``xdim * ydim``; ``None`` is
        20, or ``xdim * ydim`` if smaller. Ignored otherwise.
    n_clusters_method : {"auto", "knee", "elbow", "delta_area"}, default="auto"
        With ``n_clusters="auto"``: the rule of :func:`~pixelflowsom.choose_n_clusters`. ``"auto"`` is ``"knee"``;
        ``"elbow"`` is R FlowSOM's (``FlowSOM(maxMeta = ...)``); ``"delta_area"`` is ConsensusClusterPlus's and needs
        ``metaclustering=ConsensusClustering()``. Ignored otherwise.
    metaclustering : estimator or None, default=None
        Clusterer of the SOM codes with a ``fit_predict`` method. It is cloned, and its ``n_clusters`` parameter (if
        any) is set to ``n_clusters_``. ``None`` uses what ``flowsom`` uses, average-linkage
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
    n_clusters_ : int
        The number of metaclusters: ``n_clusters``, or the one chosen with ``n_clusters="auto"``.
    n_clusters_choice_ : NClustersChoice or None
        With ``n_clusters="auto"``, how the number was chosen: its ``criterion`` is the table of the criterion per
        number of metaclusters, which :func:`pixelflowsom.pl.n_clusters_criterion` draws. None otherwise.
    grid_ : ndarray of shape (xdim * ydim, 2)
        Grid position ``(x, y)`` of every node.
    metaclustering_ : estimator
        The fitted metaclustering model.
    labels_ : ndarray of shape (n_samples,) or (n_samples_fit_,)
        0-based metacluster of every row of an in-memory table ``X``. For a dask array, images or a
        :class:`~pixelflowsom.PixelSample`, of the training sample only (the rows ``sample_indices_``, resp. the
        pixels ``sample_coords_``, image after image), so that the model never holds the data or a graph over them:
        :meth:`predict` labels all of them, lazily.
    node_labels_ : ndarray of shape like ``labels_``
        0-based SOM node of the same rows (the smallest unsigned dtype holding the node ids), so that a revised
        node -> metacluster map (:func:`~pixelflowsom.update_metaclusters`) relabels them.
    metacluster_names_ : dict of int to str
        Names of metaclusters by 1-based id (as in label images and pictures); empty after ``fit``, set by
        :func:`~pixelflowsom.update_metaclusters`.
    n_samples_fit_ : int
        Number of rows the SOM was trained on.
    quantization_error_ : float
        Mean Euclidean distance of the training sample to its nearest code.
    channel_percentiles_ : ndarray of shape (3, n_features_in_)
        The 1st, 50th and 99th percentiles (rows) of every channel over the training pixels (at most
        ``PERCENTILE_ROWS`` of them, evenly spaced in the sample), float64: what the model's input looked like, to
        compare later input with (the command line's ``apply`` refuses images far from it).
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
    sample_indices_ : ndarray of shape (n_samples_fit_,)
        Dask array input only: the sorted indices of the rows trained on.

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
    ``int(fraction * n_pixels)`` pixels of every image (or its share of ``n_samples``), with a seed derived from
    ``random_state`` and the image's position in the list, independent of the chunking; sampled pixels with a NaN
    channel are then dropped.
    ``predict`` and ``transform`` return lazy dask-backed label images following the spatialdata convention:
    1-based ids, 0 where any selected channel of the pixel is NaN (or infinite), in the smallest unsigned dtype
    holding the ids (the computed blocks have exactly the declared dtype). ``predict`` gives the metacluster image
    (ids ``1..n_clusters``); ``transform`` a stack with a leading ``label`` axis ``[som_node, metacluster]``
    (ids up to ``xdim*ydim``). A list of images gives a list of label images.

    **Samples**: :meth:`training_sample` draws the pixels ``fit(images)`` trains on, a
    :class:`~pixelflowsom.PixelSample` (as :func:`~pixelflowsom.sample_pixels` does), and ``fit`` accepts it: with an
    int ``random_state``, ``fit(training_sample(images))`` is ``fit(images)``. Draw the sample yourself to train
    several models on one read of the images, or to keep the training pixels' values and coordinates, which the
    fitted model does not hold.

    Ties between equally near nodes go to the lowest node index, as :func:`numpy.argmin` does on float64
    distances.

    Dask arrays stay lazy in ``predict`` and ``transform`` (one task per row chunk); ``fit`` reads only the chunks
    holding sampled rows.

    **Saving** with :func:`~pixelflowsom.save_model` writes a skops file, which :func:`~pixelflowsom.load_model`
    loads without running code from it (only numpy, scikit-learn and :data:`~pixelflowsom.TRUSTED_TYPES`): the fitted
    state is arrays and plain values. :mod:`joblib` and :mod:`pickle` work too, for files you trust. Either stores
    what the model learned, never the data: the codes, the node
    map, the metaclustering model and, for images, dask arrays and samples, the training sample's ``labels_`` and
    ``sample_coords_`` (or ``sample_indices_``). For a 10 x 10 SOM on up to 40 channels a pickle takes at most 64 kB
    (128 kB with :class:`~pixelflowsom.ConsensusClustering`, which keeps its ``n_nodes x n_nodes`` consensus matrix)
    plus ``8 * n_samples_fit_ * (1 + n_spatial_dims)`` bytes, whatever the size of the images (an in-memory table
    adds ``labels_`` of all its rows, as scikit-learn's clusterers do). Loading it with another pixelflowsom
    version warns with :class:`~pixelflowsom.InconsistentVersionWarning`. skops files are compressed: about half
    the size of the pickle.

    :meth:`set_output` applies to tables only: images always give label images, and a dask array stays lazy.

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
        "n_clusters": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_clusters": [Interval(Integral, 2, None, closed="left"), None],
        "n_clusters_method": [StrOptions({"auto", "knee", "elbow", "delta_area"})],
        "xdim": [Interval(Integral, 1, None, closed="left")],
        "ydim": [Interval(Integral, 1, None, closed="left")],
        "rlen": [Interval(Integral, 1, None, closed="left")],
        "mst": [Interval(Integral, 1, None, closed="left")],
        "alpha": ["array-like"],
        "fraction": [Interval(Real, 0, 1, closed="right"), None],
        "n_samples": [Interval(Integral, 1, None, closed="left"), None],
        "som": [StrOptions({"online", "batch", "hybrid"}), HasMethods(["fit"])],
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
        fraction=None,
        n_samples=None,
        som="online",
        max_clusters=None,
        n_clusters_method="auto",
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
        self.n_samples = n_samples
        self.som = som
        self.max_clusters = max_clusters
        self.n_clusters_method = n_clusters_method
        self.metaclustering = metaclustering
        self.channels = channels
        self.chunks = chunks
        self.random_state = random_state

    # ------------------------------------------------------------------ validation

    def _check_params(self):
        """Cross-parameter checks that ``_parameter_constraints`` cannot express; returns ``alpha`` as floats."""
        n_nodes = self.xdim * self.ydim
        if self.n_clusters != "auto" and self.n_clusters > n_nodes:
            raise ValueError(
                f"n_clusters={self.n_clusters} is larger than the number of SOM nodes xdim * ydim = "
                f"{self.xdim} * {self.ydim} = {n_nodes}; lower n_clusters or enlarge the grid."
            )
        if self.n_clusters == "auto" and self.max_clusters is not None and self.max_clusters > n_nodes:
            raise ValueError(
                f"max_clusters={self.max_clusters} is larger than the number of SOM nodes xdim * ydim = "
                f"{self.xdim} * {self.ydim} = {n_nodes}; lower max_clusters or enlarge the grid."
            )
        if isinstance(self.chunks, tuple) and not all(
            isinstance(c, Integral) and not isinstance(c, bool) and c > 0 for c in self.chunks
        ):
            raise ValueError(
                f"chunks={self.chunks!r} must hold a positive int per spatial axis, e.g. (1024, 1024) for (y, x)."
            )
        if self.n_clusters_method == "delta_area" and not isinstance(self.metaclustering, ConsensusClustering):
            raise ValueError(
                'n_clusters_method="delta_area" needs metaclustering=ConsensusClustering(); use "knee" or "elbow" '
                "with another metaclustering."
            )
        if self.n_clusters == "auto" and n_nodes < 2:
            raise ValueError('n_clusters="auto" needs a SOM of at least 2 nodes; enlarge xdim or ydim.')
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
        """Train the SOM on a sample of the pixels of ``X`` and metacluster its nodes.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, list of images, or PixelSample
            Pixels (rows) by channels (columns), finite; or images (see Notes of the class); or a
            :class:`~pixelflowsom.PixelSample` drawn from images by :func:`~pixelflowsom.sample_pixels`, which is
            trained on whole (``fraction`` was applied when it was drawn).
        y : None
            Ignored.

        Returns
        -------
        self : PixelFlowSOM
            The fitted estimator.
        """
        alpha = self._check_params()
        random_state = check_random_state(self.random_state)
        if isinstance(X, PixelSample):
            sample = self._check_pixel_sample(X)
            # The integer sample_pixels draws from the same random state: fit(sample_pixels(images, ...,
            # random_state=s)) then trains exactly as fit(images) with random_state=s.
            random_state.randint(np.iinfo(np.int32).max)
        elif _images.is_image_input(X):
            sample = self._sample(X, random_state)
        else:
            self._fit_table(X, alpha, random_state)
            return self
        self.__dict__.pop("sample_indices_", None)
        self.channels_ = list(sample.channels)
        self.feature_names_in_ = np.asarray([str(c) for c in sample.channels], dtype=object)
        self.n_features_in_ = len(sample.channels)
        nodes = self._fit_sample(sample.values, alpha, random_state)
        self.sample_coords_ = sample.coords_by_image()
        self._set_labels(nodes)
        return self

    def check_input(self, X=None):
        """Check the parameters and the images as ``fit`` (once fitted: ``transform``) does, without reading a pixel.

        Call it to report every problem of a call before starting work that is costly to undo, e.g. before
        checking that the outputs may be written.

        Parameters
        ----------
        X : image, list of images or None, default=None
            The images ``fit`` or ``transform`` will get (see Notes of the class); ``None`` checks the parameters only.

        Returns
        -------
        channels : list or None
            The labels of the channels clustered on, in the model's order: ``channels_`` once fitted (None if fitted on
            a table without feature names), else ``channels`` or, for ``channels=None``, all channels of the first
            image (None if ``X`` is None).

        Raises
        ------
        ValueError, TypeError, KeyError
            Bad parameters, images (dims, dtype), or channels missing from an image (with the closest names).
        """
        validate_params(self)
        self._check_params()
        if X is not None and not _images.is_image_input(X):
            raise TypeError(f"check_input takes an image or a list of images, got {type(X).__name__}.")
        if hasattr(self, "codes_"):
            if X is not None:
                self._validate_images(X)
            labels = getattr(self, "channels_", None)
            return None if labels is None else [_images.plain(c) for c in labels]
        if X is None:
            return None if self.channels is None else _images.resolve_channels(self.channels, None)
        images, _ = _images.check_images(X)
        labels = _images.resolve_channels(self.channels, images[0])
        for i, image in enumerate(images):
            _images.channel_positions(image, labels, i)
        return labels

    def training_sample(self, X):
        """Draw the pixels that ``fit(X)`` trains on, after checking the parameters and the images.

        Parameters
        ----------
        X : image or list of images
            As in :meth:`fit` (see Notes of the class).

        Returns
        -------
        PixelSample
            ``sample_pixels(X, fraction, channels=channels, random_state=random_state)``. With an int
            ``random_state``, ``fit(training_sample(X))`` gives exactly the model ``fit(X)`` gives.

        Raises
        ------
        ValueError, TypeError, KeyError
            Bad parameters, images or channels, all before any pixel is read.
        """
        validate_params(self)
        self._check_params()
        if not _images.is_image_input(X):
            raise TypeError(
                f"training_sample takes an image or a list of images, got {type(X).__name__}; tables are sampled by "
                "fit itself."
            )
        return self._sample(X, self.random_state)

    def _sample(self, X, random_state):
        with phase("sample the training pixels"):
            return sample_pixels(
                X, self.fraction, n_samples=self.n_samples, channels=self.channels, random_state=random_state
            )

    def _check_pixel_sample(self, sample):
        if self.channels is not None:
            wanted = _images.resolve_channels(self.channels, None)
            if [str(c) for c in wanted] != [str(c) for c in sample.channels]:
                raise ValueError(
                    f"The PixelSample holds channels {sample.channels} but channels={self.channels!r}; draw the "
                    "sample with these channels or set channels=None."
                )
        if sample.n_samples < 1:
            raise ValueError("The PixelSample holds no pixel; draw it with a larger fraction.")
        return sample

    def _fit_table(self, X, alpha, random_state):
        X = self._validate_table(X, reset=True)
        for attribute in ("channels_", "sample_coords_", "sample_indices_"):
            self.__dict__.pop(attribute, None)
        n = X.shape[0]
        size = int(sample_sizes([n], self.fraction, self.n_samples, unit="row")[0])
        rows = sample_indices(n, size, random_state.randint(np.iinfo(np.int32).max))
        sample = take_rows(X, rows)
        if not np.isfinite(sample).all():
            raise ValueError("Input X contains NaN or infinity; remove or impute those rows before fitting.")
        nodes = self._fit_sample(sample, alpha, random_state)
        if _is_dask_array(X):
            # The labels of the training rows only: the model must not hold X or a graph over it.
            self.sample_indices_ = rows
        else:
            nodes = label_table(X, self._som_model(), column=0)
        self._set_labels(nodes)

    def _set_labels(self, nodes):
        """``labels_`` and ``node_labels_`` of the rows whose 0-based nearest nodes are ``nodes``."""
        self.node_labels_ = np.asarray(nodes).astype(np.min_scalar_type(max(self.codes_.shape[0] - 1, 0)))
        self.labels_ = self.node_metacluster_[self.node_labels_]

    def _fit_sample(self, sample, alpha, random_state):
        """Train the SOM and the metaclustering on an in-memory, finite sample; set fitted attributes.

        Returns the nearest node of every sample row.
        """
        with phase("train the SOM"):
            codes, n_iter = self._train_som(sample, alpha, random_state)
        with phase("metacluster the SOM nodes"):
            nodes, distances = nearest_nodes(sample, codes, return_distances=True)
            self.metaclustering_, self.n_clusters_, self.n_clusters_choice_ = self._fit_metaclustering(
                codes, np.bincount(nodes, minlength=codes.shape[0]), random_state
            )
        self.n_iter_ = n_iter
        self.codes_ = codes
        self.node_metacluster_ = np.asarray(self.metaclustering_.labels_, dtype=np.int64)
        self.grid_ = _som.grid_coordinates(self.xdim, self.ydim)
        self.quantization_error_ = float(distances.mean())
        self.n_samples_fit_ = sample.shape[0]
        self.channel_percentiles_ = _channel_percentiles(sample)
        self.metacluster_names_ = {}
        return nodes

    def _train_som(self, sample, alpha, random_state):
        n_nodes = self.xdim * self.ydim
        if sample.shape[0] < n_nodes:
            warnings.warn(
                f"Only {sample.shape[0]} rows were sampled for {n_nodes} SOM nodes: the initial codes are drawn with "
                "replacement. Raise fraction, pass more data or use a smaller grid.",
                UserWarning,
                stacklevel=4,
            )
        if isinstance(self.som, str):
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
        model = clone(self.som)
        values = {"xdim": self.xdim, "ydim": self.ydim, "rlen": self.rlen, "mst": self.mst, "alpha": alpha}
        params = model.get_params()
        model.set_params(**{name: values[name] for name in _SOM_PARAMS if name in params})
        model.fit(sample)
        codes = np.array(getattr(model, "codes", None), dtype=np.float64)
        if codes.shape != (n_nodes, sample.shape[1]) or not np.isfinite(codes).all():
            raise ValueError(
                f"som={self.som!r} must leave finite codes of shape (xdim * ydim, n_features) = "
                f"({n_nodes}, {sample.shape[1]}) in its codes attribute after fit, got shape {codes.shape}."
            )
        return codes, self.rlen * self.mst

    def _fit_metaclustering(self, codes, node_counts, random_state):
        """Fit the metaclustering on the codes; returns ``(model, n_clusters, choice)``.

        ``node_counts`` are the training rows per node (the weights of ``n_clusters="auto"``); ``choice`` is the
        :class:`~pixelflowsom.NClustersChoice` of ``"auto"``, else None.
        """
        model = default_metaclustering() if self.metaclustering is None else clone(self.metaclustering)
        params = model.get_params()
        if "random_state" in params:
            model.set_params(random_state=random_state.randint(np.iinfo(np.int32).max))
        choice = None
        n_clusters = self.n_clusters
        if n_clusters == "auto":
            max_clusters = min(20, codes.shape[0]) if self.max_clusters is None else self.max_clusters
            # Nodes weighted by their pixels (unweighted if fewer than two nodes won any); the seeded model itself, so
            # that the labels at the chosen k are those of the fit below.
            weight = node_counts if np.count_nonzero(node_counts) >= 2 else None
            choice = choose_n_clusters(
                codes, model, max_clusters=max_clusters, method=self.n_clusters_method, sample_weight=weight
            )
            n_clusters = choice.n_clusters
        if "n_clusters" in params:
            model.set_params(n_clusters=n_clusters)
        if n_clusters == 1 and "n_clusters" in params:
            # One metacluster needs no clustering (and agglomerative clustering refuses a single node).
            model.labels_ = np.zeros(codes.shape[0], dtype=np.int64)
            return model, 1, choice
        labels = np.asarray(model.fit_predict(codes))
        if labels.shape != (codes.shape[0],) or labels.min() < 0:
            raise ValueError(
                f"metaclustering={model!r} must label every SOM node with a cluster >= 0, got labels "
                f"{np.unique(labels)}."
            )
        model.labels_ = labels
        return model, int(n_clusters), choice

    # ------------------------------------------------------------------ labelling

    def _validate_images(self, X):
        """Check images given after fit and find the fitted channels in them.

        Returns ``(images, positions, single)``: the images as given (not subset: labelling reads the fitted
        channels of every block in place) and, per image, the positions of the fitted channels along ``c``.
        """
        images, single = _images.check_images(X)
        if hasattr(self, "channels_"):
            labels = self.channels_
        elif hasattr(self, "feature_names_in_"):
            labels = list(self.feature_names_in_)
        else:
            labels = None
        positions = []
        fix = f"This model was fitted on channels {[_images.plain(c) for c in labels or []]}; every image needs them."
        for i, image in enumerate(images):
            if labels is not None:
                positions.append(_images.channel_positions(image, labels, i, fix=fix))
            elif image.sizes["c"] != self.n_features_in_:
                # Fitted on a table without feature names: channels are matched by position.
                raise ValueError(
                    f"Image {_images.image_name(image, i)} has {image.sizes['c']} channels, but PixelFlowSOM was "
                    f"fitted on {self.n_features_in_} features."
                )
            else:
                positions.append(np.arange(self.n_features_in_))
        return images, positions, single

    def _validate_pixel_sample(self, sample):
        labels = getattr(self, "channels_", None)
        if labels is None or [str(c) for c in labels] != [str(c) for c in sample.channels]:
            raise ValueError(
                f"The PixelSample holds channels {sample.channels}; this model was fitted on "
                f"{labels if labels is not None else 'a table'}. Draw the sample with channels=model.channels_."
            )
        return sample.values

    def _som_model(self) -> SOMModel:
        """Return the immutable model that labelling ships to workers."""
        return SOMModel(self.codes_, self.node_metacluster_)

    def _label_images(self, images, positions, single, layers):
        """Lazy label images; the model enters the graph once, as one ``Delayed`` key that every block reads."""
        import dask

        payload = dask.delayed(self._som_model(), pure=True)
        n_meta = max(self.n_clusters_, int(self.node_metacluster_.max()) + 1)
        n_ids = n_meta if layers == "metacluster" else max(n_meta, self.codes_.shape[0])
        out = [
            label_image(im, payload, layers=layers, chunks=self.chunks, n_ids=n_ids, channels=channels)
            for im, channels in zip(images, positions, strict=True)
        ]
        return out[0] if single else out

    def _label(self, X, column):
        if _images.is_image_input(X):
            return self._label_images(*self._validate_images(X), layers="metacluster" if column == 1 else "both")
        if isinstance(X, PixelSample):
            return label_table(self._validate_pixel_sample(X), self._som_model(), column=column)
        return label_table(self._validate_table(X, reset=False), self._som_model(), column=column)

    def predict(self, X):
        """Metacluster of every row: the metacluster of its nearest SOM node.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, list of images, or PixelSample
            Pixels by channels, with the features seen in ``fit``; or images with the fitted channels (selected by
            label, whatever their order in the image); or a :class:`~pixelflowsom.PixelSample` of them.

        Returns
        -------
        labels : ndarray, dask array, DataArray or list of DataArray
            For tables and samples, 0-based metacluster labels (int64), lazy for a dask array. For images, the lazy
            1-based metacluster image(s), 0 at NaN pixels.
        """
        check_is_fitted(self)
        return self._label(X, column=1)

    def transform(self, X):
        """SOM node and metacluster of every row.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, list of images, or PixelSample
            Pixels by channels, with the features seen in ``fit``; or images with the fitted channels (selected by
            label, whatever their order in the image); or a :class:`~pixelflowsom.PixelSample` of them.

        Returns
        -------
        labels : ndarray, dask array, DataArray or list of DataArray
            For tables and samples, columns ``[som_node, metacluster]``, 0-based int64, lazy for a dask array. For
            images, lazy ``(2, [z,] y, x)`` stack(s) ``[som_node, metacluster]`` of 1-based ids, 0 at NaN pixels.
        """
        check_is_fitted(self)
        out = self._label(X, column=None)
        if _images.is_image_input(X):
            return out  # label images, whatever the output configuration
        adapter = _get_container_adapter("transform", self)
        if adapter is None:
            return out
        if _is_dask_array(out):
            return _lazy_frame(out) if adapter.container_lib == "pandas" else out
        return adapter.create_container(out, X, columns=self.get_feature_names_out)

    def set_output(self, *, transform=None):
        """Set the output container of :meth:`transform` and ``fit_transform`` for tables.

        Parameters
        ----------
        transform : {"default", "pandas", "polars"} or None, default=None
            ``"pandas"`` / ``"polars"``: tables become DataFrames with the columns ``["som_node", "metacluster"]``
            (the index of a pandas input is kept). Images always give label images, whatever this is. A dask array
            stays lazy: with ``"pandas"`` it becomes a lazy ``dask.dataframe.DataFrame``; with ``"polars"`` it stays a
            dask array (polars has no lazy frame over dask). ``None`` leaves the configuration unchanged.

        Returns
        -------
        self : PixelFlowSOM
            The estimator.
        """
        return set_output_config(self, transform)

    def fit_predict(self, X, y=None, **kwargs):
        """Fit, then return the metacluster of every row or pixel of ``X``.

        Parameters
        ----------
        X : {array-like, dask array} of shape (n_samples, n_features), image, list of images, or PixelSample
            As in :meth:`fit`.
        y : None
            Ignored.
        **kwargs : dict
            Ignored; accepted for compatibility with :class:`~sklearn.base.ClusterMixin`.

        Returns
        -------
        labels : ndarray, dask array, DataArray or list of DataArray
            For an in-memory table or a PixelSample, ``labels_``: 0-based metacluster labels of every row. For a dask
            array, the lazy 0-based labels of every row; for images, the lazy 1-based metacluster image(s), as
            :meth:`predict` returns them (one lazy graph per image, built once).
        """
        self.fit(X)
        if _images.is_image_input(X) or _is_dask_array(X):
            return self.predict(X)
        return self.labels_

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
