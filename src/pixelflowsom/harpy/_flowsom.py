"""``flowsom``: the drop-in for ``harpy.im.flowsom``. It only translates between SpatialData and PixelFlowSOM."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import nullcontext
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd

from pixelflowsom._estimator import PixelFlowSOM
from pixelflowsom._images import full_resolution
from pixelflowsom.harpy._fsom import build_flowsom
from pixelflowsom.harpy._model import PixelSOMEstimator, fitted_flowsom_model

#: Keywords of ``flowsom.FlowSOM`` itself that the call passes on (the rest belong to its models).
_FLOWSOM_KEYWORDS = ("xdim", "ydim", "rlen", "mst", "alpha", "mad_allowed", "model")
#: Cluster-model options pixelflowsom's SOM implements; any other option of the cluster model trains with flowsom.
_FAST_SOM_KEYWORDS = {"xdim", "ydim", "rlen", "mst", "alpha", "seed", "som"}
#: The SOM algorithm of the drop-in when the call does not choose one (``som=`` or ``model=``): the batch SOM, which
#: is what makes the call an order of magnitude faster than harpy's (benchmarks/bench_harpy.py).
DEFAULT_SOM = "batch"


def _names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Iterable) else None
    if names is None or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what}={value!r} must be a str or an iterable of str.")
    return names


def _model_keywords(model_class, default) -> tuple[set[str], set[str]]:
    """Keywords of the cluster and metacluster models of a flowsom model class (what ``FlowSOM(**kwargs)`` takes).

    Without ``model=``, the cluster model is pixelflowsom's :class:`PixelSOMEstimator` (hence ``som``), which also
    accepts the options of flowsom's ``SOMEstimator`` (those it does not implement train with flowsom).
    """
    params = inspect.signature(model_class).parameters
    cluster = set(inspect.signature(params["cluster_model"].default).parameters)
    if default:
        cluster |= set(inspect.signature(PixelSOMEstimator).parameters)
    metacluster = params["metacluster_model"].default
    return cluster, set(inspect.signature(metacluster).parameters)


def _check_kwargs(kwargs, n_clusters):
    """Split ``**kwargs`` as ``flowsom.FlowSOM`` would; unknown keywords raise ``TypeError`` naming them."""
    from flowsom.models import BaseFlowSOMEstimator, FlowSOMEstimator

    model_class = kwargs.get("model", FlowSOMEstimator)
    if not (inspect.isclass(model_class) and issubclass(model_class, BaseFlowSOMEstimator)):
        raise TypeError(
            f"model={model_class!r} must be a flowsom.models.BaseFlowSOMEstimator subclass, "
            "e.g. flowsom.models.BatchFlowSOMEstimator."
        )
    cluster_keys, metacluster_keys = _model_keywords(model_class, default="model" not in kwargs)
    allowed = set(_FLOWSOM_KEYWORDS) | ((cluster_keys | metacluster_keys) - {"n_clusters", "seed"})
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"flowsom() got unexpected keyword argument(s) {unknown}; FlowSOM options are {sorted(allowed)} "
            "(the seed is random_state, the channels are channels)."
        )
    xdim, ydim = kwargs.get("xdim", 10), kwargs.get("ydim", 10)
    for name, value in (("xdim", xdim), ("ydim", ydim), ("n_clusters", n_clusters)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer.")
    if n_clusters > xdim * ydim:
        raise ValueError(
            f"n_clusters={n_clusters} is larger than the number of SOM nodes xdim * ydim = {xdim * ydim}; lower "
            "n_clusters or enlarge the grid."
        )
    som_options = {k: v for k, v in kwargs.items() if k in cluster_keys and k not in ("xdim", "ydim")}
    metacluster_options = {k: v for k, v in kwargs.items() if k in metacluster_keys and k not in cluster_keys}
    return model_class, xdim, ydim, som_options, metacluster_options


def _check_outputs(sdata, images, clusters, metaclusters, overwrite):
    outputs = clusters + metaclusters
    repeated = sorted({n for n in outputs if outputs.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Output name(s) {repeated} are used more than once; every cluster and metacluster output needs its own "
            "name."
        )
    kinds = {name: kind for kind, name, _ in sdata._gen_elements(include_tables=True)}
    for name in outputs:
        if name in images or (name in kinds and kinds[name] != "labels"):
            raise ValueError(
                f"Output name {name!r} is already the name of a {kinds.get(name, 'images')} element of sdata; "
                "choose another output name."
            )
        if name in kinds and not overwrite:
            raise ValueError(f"Labels element {name!r} already exists in sdata; pass overwrite=True to replace it.")


def _spatial_chunks(chunks, ndim):
    """Translate harpy's ``chunks`` (with the ``c`` axis) to PixelFlowSOM's spatial chunks."""
    if chunks is None or chunks == "auto":
        return chunks
    if isinstance(chunks, Integral) and not isinstance(chunks, bool) and chunks > 0:
        return int(chunks)
    if isinstance(chunks, tuple | list) and all(isinstance(c, Integral) and c > 0 for c in chunks):
        if len(chunks) != ndim:
            axes = "(c, y, x)" if ndim == 3 else "(c, z, y, x)"
            raise ValueError(
                f"chunks={tuple(chunks)} has {len(chunks)} sizes; these images need {ndim}: {axes}. The c size is "
                "ignored: the model reads all channels of a pixel at once."
            )
        return tuple(int(c) for c in chunks[1:])
    raise TypeError(f"chunks={chunks!r} must be None, 'auto', a positive int or a tuple of positive ints.")


def flowsom(
    sdata,
    image_name,
    output_cluster_labels_name,
    output_metacluster_labels_name,
    channels=None,
    fraction=0.1,
    n_clusters=5,
    random_state=100,
    chunks=None,
    scale_factors=None,
    client=None,
    persist_intermediate=True,
    write_intermediate=True,
    instance_key="cell_ID",
    region_key="fov_labels",
    spatial_key="spatial",
    overwrite=False,
    **kwargs,
):
    """Cluster the pixels of image elements with FlowSOM and add the SOM-node and metacluster labels to ``sdata``.

    A drop-in for ``harpy.im.flowsom`` (harpy-analysis 0.4): same call, same returned objects, same elements in
    ``sdata``, computed with :class:`pixelflowsom.PixelFlowSOM`. One model is trained on the pooled samples of all
    images, then every pixel of every image is labelled.

    Parameters
    ----------
    sdata : spatialdata.SpatialData
        The SpatialData object, in memory or backed by a zarr store.
    image_name : str or iterable of str
        The image element(s) to cluster (2D ``(c, y, x)`` or 3D ``(c, z, y, x)``, all of one dimensionality).
    output_cluster_labels_name, output_metacluster_labels_name : str or iterable of str
        Names of the labels elements written for every image: SOM nodes, resp. metaclusters. As many as images.
    channels : str, int or iterable of them, optional
        Channels to cluster on, selected by the labels of the images' ``c`` coordinate (as ``sel(c=...)``).
        Default: all channels of the first image. Every image must have them.
    fraction : float, default=0.1
        In (0, 1]: every image contributes ``int(fraction * n_pixels)`` pixels drawn without replacement; pixels
        with a NaN channel are then dropped. **Improved**: each image gets its own seed, derived from
        ``random_state`` and its position (harpy samples the same coordinates in same-shaped images), and the
        sample does not depend on the chunking.
    n_clusters : int, default=5
        Number of metaclusters, at most ``xdim * ydim``.
    random_state : int, default=100
        Seed of the whole call: the same inputs give identical labels whatever the chunking or the scheduler.
    chunks : int, "auto" or tuple of int, optional
        Chunks for inference, ``(c, y, x)`` for 2D and ``(c, z, y, x)`` for 3D images (the ``c`` size is ignored:
        a pixel's channels are read together). The labels are chunked like the spatial part. **Improved**: applied
        alike to every image (harpy mangles the tuple for the second and later 2D images).
    scale_factors : list, optional
        As in ``spatialdata.models.Labels2DModel.parse``: the labels become multiscale elements.
    client : distributed.Client, optional
        Runs the sampling and the labelling; the trained model is scattered to the workers once.
    persist_intermediate : bool, default=True
        Zarr-backed ``sdata`` only: keep the ``(2, [z,] y, x)`` label stack in memory between computing it and
        writing the two labels elements (``True``), or go through a temporary zarr folder next to the store
        (``False``, less memory). Either way the model runs once per pixel and nothing temporary remains.
    write_intermediate : bool, default=True
        Accepted for compatibility; ignored. harpy writes the image and a coordinate grid to a temporary zarr store
        to sample it; pixelflowsom reads only the sampled pixels, chunk by chunk.
    instance_key, region_key, spatial_key : str
        Names, in the returned sample table (``fsom.get_cell_data()``), of the pixel id column, the image name
        column and the ``obsm`` slot of the pixel coordinates.
    overwrite : bool, default=False
        Replace existing labels elements with the output names. **Improved**: every output name is checked before
        any work, in memory and backed alike, also against non-labels elements (harpy checks only backed stores,
        after all the work).
    **kwargs
        FlowSOM options as ``flowsom.FlowSOM`` takes them: ``xdim``, ``ydim`` (default 10 x 10), ``rlen``, ``mst``,
        ``alpha``, ``mad_allowed``, ``model`` (a ``flowsom.models.BaseFlowSOMEstimator`` subclass: training then
        uses that class) and options of its cluster and metacluster models. Without ``model``, the cluster model is
        pixelflowsom's SOM (``fsom.model.cluster_model`` is a :class:`~pixelflowsom.harpy._model.PixelSOMEstimator`)
        and its option ``som`` chooses the algorithm: ``"batch"`` (the default: pixelflowsom's batch SOM, with
        FlowSOM's grid, neighbourhood and radius schedule; the speed of this call rests on it) or ``"online"``
        (FlowSOM's online SOM, exactly as R FlowSOM runs it, on pixelflowsom's kernels: about 3x slower here).
        ``model=flowsom.models.FlowSOMEstimator`` trains with flowsom's own code. **Improved**: an unknown keyword
        raises ``TypeError``.

    Returns
    -------
    sdata : spatialdata.SpatialData
        The same object, with two labels elements per image: ``uint`` (the smallest holding ``xdim * ydim``), 0
        where a selected channel is NaN, else the 1-based SOM node (``1..xdim*ydim``), resp. metacluster
        (``1..n_clusters``), with the image's transformations. In a backed ``sdata`` they are written to the store
        and read back lazily.
    fsom : flowsom.FlowSOM
        A genuine FlowSOM object: ``fsom.model`` is a fitted instance of the requested model class (by default a
        ``flowsom.models.FlowSOMEstimator`` whose ``cluster_model`` runs pixelflowsom's SOM), and
        ``fsom.get_cell_data()`` holds the sampled pixels (0-based ``clustering`` / ``metaclustering``, their
        ``(y, x)`` or ``(z, y, x)`` indices in ``obsm[spatial_key]``).
    mapping : pandas.Series
        Named ``"metaclustering"``: the 1-based metacluster of every 1-based SOM node ``1..xdim*ydim``.

    Raises
    ------
    KeyError
        A missing image or channel (naming it and listing what is available).
    ValueError, TypeError
        Bad arguments; all checked before any pixel is read, so a failed call leaves ``sdata`` and its store as
        they were.
    """
    sdata, fsom, mapping, _ = _flowsom(
        sdata=sdata,
        image_name=image_name,
        output_cluster_labels_name=output_cluster_labels_name,
        output_metacluster_labels_name=output_metacluster_labels_name,
        channels=channels,
        fraction=fraction,
        n_clusters=n_clusters,
        random_state=random_state,
        chunks=chunks,
        scale_factors=scale_factors,
        client=client,
        persist_intermediate=persist_intermediate,
        write_intermediate=write_intermediate,
        instance_key=instance_key,
        region_key=region_key,
        spatial_key=spatial_key,
        overwrite=overwrite,
        **kwargs,
    )
    return sdata, fsom, mapping


def _flowsom(
    sdata,
    image_name,
    output_cluster_labels_name,
    output_metacluster_labels_name,
    channels=None,
    fraction=0.1,
    n_clusters=5,
    random_state=100,
    chunks=None,
    scale_factors=None,
    client=None,
    persist_intermediate=True,
    write_intermediate=True,
    instance_key="cell_ID",
    region_key="fov_labels",
    spatial_key="spatial",
    overwrite=False,
    **kwargs,
):
    """Run :func:`flowsom`; also return the fitted :class:`~pixelflowsom.PixelFlowSOM` (for the command line)."""
    # ---- validate everything before any work
    images = _names(image_name, "image_name")
    clusters = _names(output_cluster_labels_name, "output_cluster_labels_name")
    metaclusters = _names(output_metacluster_labels_name, "output_metacluster_labels_name")
    if not len(images) == len(clusters) == len(metaclusters):
        raise ValueError(
            f"Got {len(images)} image_name, {len(clusters)} output_cluster_labels_name and {len(metaclusters)} "
            "output_metacluster_labels_name; pass one output name of each kind per image."
        )
    missing = [name for name in images if name not in sdata.images]
    if missing:
        raise KeyError(f"Image element(s) {missing} not found in sdata; available images: {list(sdata.images)}.")
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r} must be a number in (0, 1], e.g. fraction=0.1.")
    if not isinstance(random_state, Integral) or isinstance(random_state, bool):
        raise TypeError(f"random_state={random_state!r} must be an int seed.")
    model_class, xdim, ydim, som_options, metacluster_options = _check_kwargs(kwargs, n_clusters)
    _check_outputs(sdata, images, clusters, metaclusters, overwrite)
    elements = [sdata.images[name] for name in images]
    arrays = [full_resolution(element).rename(name) for element, name in zip(elements, images, strict=True)]
    estimator = PixelFlowSOM(
        n_clusters=n_clusters,
        xdim=xdim,
        ydim=ydim,
        fraction=fraction,
        channels=channels,
        chunks=_spatial_chunks(chunks, arrays[0].ndim),
        random_state=random_state,
        metaclustering=_metacluster_instance(model_class, n_clusters, metacluster_options),
        som=som_options.get("som", DEFAULT_SOM),
        **{k: som_options[k] for k in ("rlen", "mst", "alpha") if k in som_options},
    )
    trainer = None
    if "model" in kwargs or set(som_options) - _FAST_SOM_KEYWORDS:
        trainer = _FlowSOMTrainer(model_class, xdim, ydim, n_clusters, random_state, kwargs)

    # ---- sample, train (the estimator checks the images and channels before reading a pixel), label, write
    with _scheduler(client):
        sample = estimator._fit_keeping_sample(arrays, trainer=trainer)
        payload = client.scatter(estimator._payload(), broadcast=True) if client is not None else None
        stacks = estimator._label_images(arrays, False, layers="both", payload=payload)

        # The FlowSOM object (single-threaded pandas/numpy work) is built while the labels compute.
        def build():
            return _build_fsom(
                estimator,
                sample,
                _regions(images, sample.image_index),
                trainer.model if trainer is not None else None,
                random_state,
                kwargs,
                metacluster_options,
                (instance_key, region_key, spatial_key),
            )

        fsom = _write_labels(
            sdata, elements, stacks, clusters, metaclusters, scale_factors, persist_intermediate, while_computing=build
        )

    # ---- the mapping
    mapping = pd.Series(
        estimator.node_metacluster_.astype(np.int64) + 1,
        index=pd.Index(np.arange(1, xdim * ydim + 1, dtype=np.int64)),
        name="metaclustering",
    )
    return sdata, fsom, mapping, estimator


def _metacluster_instance(model_class, n_clusters, options):
    """Build the metaclustering model the flowsom model class would build, as an estimator for PixelFlowSOM."""
    metacluster_class = inspect.signature(model_class).parameters["metacluster_model"].default
    return metacluster_class(n_clusters=n_clusters, **options)


class _FlowSOMTrainer:
    """Train the SOM with a flowsom model class on the sample (``model=`` or SOM options only flowsom has)."""

    def __init__(self, model_class, xdim, ydim, n_clusters, random_state, kwargs):
        self.model_class = model_class
        self.params = {"xdim": xdim, "ydim": ydim, "rlen": 10, "mst": 1, "alpha": (0.05, 0.01)}
        self.params |= {k: v for k, v in kwargs.items() if k not in ("model", "mad_allowed", "som")}
        self.params |= {"seed": random_state, "n_clusters": n_clusters}
        self.model = None

    def __call__(self, sample):
        self.model = self.model_class(**self.params)
        self.model.fit_predict(sample)
        return self.model.codes, self.model._y_codes


def _scheduler(client):
    import dask

    return dask.config.set(scheduler=client) if client is not None else nullcontext()


def _compute_stacks(stacks, temporary_parent, temporary):
    """Compute every ``(2, [z,] y, x)`` label stack once: persisted in memory, or into a temporary zarr folder."""
    import dask.array as da

    computed = []
    for stack in stacks:
        if temporary_parent is not None:
            folder = Path(tempfile.mkdtemp(prefix=".pixelflowsom-", dir=temporary_parent))
            temporary.append(folder)
            stack.data.to_zarr(str(folder / "labels.zarr"))
            computed.append(da.from_zarr(str(folder / "labels.zarr")))
        else:
            computed.append(stack.data.persist())
    return computed


def _write_labels(
    sdata, elements, stacks, clusters, metaclusters, scale_factors, persist_intermediate, while_computing=None
):
    """Add the two labels elements of every image to ``sdata`` (and its store), computing each stack once.

    The ``(2, [z,] y, x)`` stack is persisted in memory, or (backed ``sdata`` with ``persist_intermediate=False``)
    written to a temporary zarr folder beside the store, so that both labels elements read one computation. The
    stacks are computed in a background thread while ``while_computing()`` (if given) runs in this one; its result
    is returned. ``sdata`` and its store change only once both have succeeded; temporary folders are removed
    whatever happens.
    """
    from concurrent.futures import ThreadPoolExecutor

    from spatialdata import read_zarr
    from spatialdata.models import Labels2DModel, Labels3DModel
    from spatialdata.transformations import get_transformation

    backed = sdata.is_backed() and sdata.path is not None
    temporary_parent = Path(sdata.path).parent if backed and not persist_intermediate else None
    temporary = []
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(_compute_stacks, stacks, temporary_parent, temporary)
            result = while_computing() if while_computing is not None else None
            computed = future.result()
        # Everything is computed: only now is sdata (and its store) changed.
        for element, stack, data, names in zip(
            elements, stacks, computed, zip(clusters, metaclusters, strict=True), strict=True
        ):
            model = Labels2DModel if stack.ndim == 3 else Labels3DModel
            transformations = get_transformation(element, get_all=True)
            for layer, name in enumerate(names):
                labels = model.parse(
                    data[layer], dims=stack.dims[1:], transformations=transformations, scale_factors=scale_factors
                )
                on_disk = backed and name in _labels_on_disk(sdata)
                if name in sdata:
                    del sdata[name]
                sdata.labels[name] = labels
                if backed:
                    if on_disk:
                        # spatialdata refuses to overwrite inside its own store; the old element no longer reads
                        # from its folder (the new one replaced it in memory), so delete it, then write anew.
                        sdata.delete_element_from_disk(name)
                    sdata.write_element(name)
                    sdata.labels[name] = read_zarr(sdata.path, selection=("labels",)).labels[name]
        return result
    finally:
        for folder in temporary:
            shutil.rmtree(folder, ignore_errors=True)


def _labels_on_disk(sdata) -> set[str]:
    folder = Path(sdata.path) / "labels"
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def _regions(images, image_index) -> pd.Categorical:
    """Return the image name of every sample row: ``pd.Categorical(names[image_index])``, built from the codes.

    As that call would: the categories are the names of the images with sampled pixels, sorted.
    """
    present = np.flatnonzero(np.bincount(image_index, minlength=len(images)))
    names = np.asarray(images, dtype=object)[present]
    order = np.argsort(names)
    code = np.empty(len(images), dtype=np.int64)
    code[present[order]] = np.arange(len(present))
    return pd.Categorical.from_codes(code[image_index], categories=pd.Index(names[order], dtype=object))


def _build_fsom(estimator, sample, regions, trained_model, random_state, kwargs, metacluster_options, keys):
    """Build the call's ``flowsom.FlowSOM``: the sample, its labels, the model; then harpy's final touches."""
    from flowsom.models import FlowSOMEstimator

    instance_key, region_key, spatial_key = keys
    values, coords, nodes, distances = sample.values, sample.coords, sample.nodes, sample.distances
    params = {
        "xdim": estimator.xdim,
        "ydim": estimator.ydim,
        "rlen": estimator.rlen,
        "mst": estimator.mst,
        "alpha": tuple(estimator.alpha),
        "seed": random_state,
    }
    model = trained_model
    if model is None:
        model = fitted_flowsom_model(
            FlowSOMEstimator,
            som=estimator.som,
            codes=estimator.codes_,
            node_metacluster=estimator.node_metacluster_,
            X=values,
            labels=nodes,
            distances=distances,
            n_clusters=estimator.n_clusters,
            **params,
            **metacluster_options,
        )
    obs = pd.DataFrame({instance_key: np.arange(len(values)), region_key: regions})
    fsom = build_flowsom(
        values,
        var_names=[str(c) for c in estimator.channels_],
        clustering=nodes,
        metaclustering=estimator.node_metacluster_[nodes],
        distances=distances,
        codes=estimator.codes_,
        node_metacluster=estimator.node_metacluster_,
        model=model,
        n_clusters=estimator.n_clusters,
        mad_allowed=kwargs.get("mad_allowed", 4),
        obs=obs,
        obsm={spatial_key: coords.astype(np.int64)},
        **params,
    )
    # What harpy does to the table after FlowSOM: int cols_used (zarr cannot store bools), categorical labels.
    cell_data = fsom.get_cell_data()
    cell_data.var["cols_used"] = cell_data.var["cols_used"].astype(int)
    for key in ("metaclustering", "clustering"):
        cell_data.obs[key] = cell_data.obs[key].astype("category")
    return fsom
