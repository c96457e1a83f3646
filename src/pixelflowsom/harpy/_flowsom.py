"""``flowsom``: the drop-in for ``harpy.im.flowsom``. It translates between SpatialData and PixelFlowSOM, no more.

The call's arguments become a :class:`~pixelflowsom.PixelFlowSOM`, which samples, trains and labels through its
public API; the labels go into ``sdata`` (and its store); the sample and the model become a ``flowsom.FlowSOM``.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral

import numpy as np
import pandas as pd

from pixelflowsom import PixelFlowSOM
from pixelflowsom._images import full_resolution
from pixelflowsom._log import phase
from pixelflowsom._nearest import nearest_nodes
from pixelflowsom._store import check_image_names, check_output_names, scheduler, write_label_stacks
from pixelflowsom.harpy._flowsom_object import build_flowsom, default_obs_names
from pixelflowsom.harpy._model import flowsom_options


def _names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, Iterable) else None
    if names is None or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what}={value!r} must be a str or an iterable of str.")
    return names


def _spatial_chunks(chunks, ndim):
    """Translate harpy's ``chunks`` (with the ``c`` axis) to PixelFlowSOM's spatial chunks; PixelFlowSOM validates."""
    if not isinstance(chunks, tuple | list):
        return chunks
    if len(chunks) != ndim:
        axes = "(c, y, x)" if ndim == 3 else "(c, z, y, x)"
        raise ValueError(
            f"chunks={tuple(chunks)} has {len(chunks)} sizes; these images need {ndim}: {axes}. The c size is "
            "ignored: the model reads all channels of a pixel at once."
        )
    return tuple(chunks[1:])


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
    n_clusters : int or "auto", default=5
        Number of metaclusters, at most ``xdim * ydim``. **Extension**: ``"auto"`` chooses it from the SOM codes, up
        to the keyword ``max_clusters`` (default 20), as :class:`~pixelflowsom.PixelFlowSOM` does with
        ``n_clusters="auto"`` (the knee rule of :func:`~pixelflowsom.choose_n_clusters`);
        ``fsom.get_cell_data().uns["n_metaclusters"]`` and the mapping give the chosen number.
    random_state : int, default=100
        Seed of the whole call: the same inputs give identical labels whatever the chunking or the scheduler.
    chunks : int, "auto" or tuple of int, optional
        Chunks for inference, ``(c, y, x)`` for 2D and ``(c, z, y, x)`` for 3D images (the ``c`` size is ignored:
        a pixel's channels are read together). The labels are chunked like the spatial part. **Improved**: applied
        alike to every image (harpy mangles the tuple for the second and later 2D images).
    scale_factors : list, optional
        As in ``spatialdata.models.Labels2DModel.parse``: the labels become multiscale elements (every level
        computed in the same pass).
    client : distributed.Client, optional
        Runs the sampling and the labelling. The trained model (a few kB of codes) enters the task graph once, as
        one key that every worker fetches once, not embedded in every task.
    persist_intermediate, write_intermediate : bool, default=True
        Accepted for compatibility; ignored: there is no intermediate to keep. harpy writes the image and a
        coordinate grid to a temporary zarr store to sample it, and keeps or writes the labels between computing and
        writing them; pixelflowsom reads only the sampled pixels, chunk by chunk, and computes the labels of all
        images in one dask computation whose blocks go straight into the labels elements (for a zarr-backed
        ``sdata``, into their arrays in the store: memory is a few chunks per worker, whatever the number of images).
    instance_key, region_key, spatial_key : str
        Names, in the returned sample table (``fsom.get_cell_data()``), of the pixel id column, the image name
        column and the ``obsm`` slot of the pixel coordinates.
    overwrite : bool, default=False
        Replace existing labels elements with the output names. **Improved**: every output name is checked before
        any work, in memory and backed alike, also against non-labels elements and elements of the store that
        ``sdata`` does not hold (harpy checks only backed stores, after all the work). In a zarr-backed ``sdata`` a
        replaced element is swapped for the new one with an atomic rename: a process killed at any instant leaves
        every output name with its complete old or its complete new element (see :mod:`pixelflowsom._store`), and
        the next call removes what a killed call left. Writing N elements costs O(N) store operations.
    **kwargs
        FlowSOM options as ``flowsom.FlowSOM`` takes them: ``xdim``, ``ydim`` (default 10 x 10), ``rlen``, ``mst``,
        ``alpha``, ``mad_allowed``, ``model`` (a ``flowsom.models.BaseFlowSOMEstimator`` subclass: training then
        uses that class) and options of its cluster and metacluster models. Without ``model``, the cluster model is
        pixelflowsom's SOM (``fsom.model.cluster_model`` is a :class:`~pixelflowsom.harpy._model.PixelSOMEstimator`)
        and its option ``som`` chooses the algorithm, as :class:`~pixelflowsom.PixelFlowSOM`'s ``som``:
        ``"online"`` (the default: FlowSOM's online SOM as R FlowSOM runs it, in float32 arithmetic, on
        pixelflowsom's kernels),
        ``"hybrid"`` (pixelflowsom's batch SOM with FlowSOM's grid, neighbourhood and radius schedule, finished by
        three passes of FlowSOM's online updates in their final, winner-only regime) or ``"batch"`` (the batch SOM
        alone). The default was chosen on the real images of ``benchmarks/bench_real.py`` (MIBI-TOF and CODEX,
        lineage channels, fraction 0.1, 10 x 10, 12 metaclusters): the batch SOM's quantization error is 5-11%
        above harpy's on all of them; the hybrid's is below harpy's on all of them, 1.4-1.7x faster on large images,
        but its metaclusters were less stable across seeds on the MIBI image (mean pairwise ARI 0.384 against
        harpy's 0.436 over 20 seeds); the online SOM is harpy's algorithm, its quality harpy's (see
        ``docs/performance.md``).
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
    TypeError
        ``sdata`` is not a ``SpatialData`` object.
    KeyError
        A missing image or channel (naming it and listing what is available).
    ValueError, TypeError
        Bad arguments; all checked before any pixel is read, so a failed call leaves ``sdata`` and its store as
        they were.
    """
    from spatialdata import SpatialData

    # ---- validate everything before any work
    if not isinstance(sdata, SpatialData):
        raise TypeError(f"sdata must be a spatialdata.SpatialData object, got {type(sdata).__name__}.")
    images = _names(image_name, "image_name")
    clusters = _names(output_cluster_labels_name, "output_cluster_labels_name")
    metaclusters = _names(output_metacluster_labels_name, "output_metacluster_labels_name")
    if not len(images) == len(clusters) == len(metaclusters):
        raise ValueError(
            f"Got {len(images)} image_name, {len(clusters)} output_cluster_labels_name and {len(metaclusters)} "
            "output_metacluster_labels_name; pass one output name of each kind per image."
        )
    check_image_names(sdata, images)
    if not isinstance(random_state, Integral) or isinstance(random_state, bool):
        raise TypeError(f"random_state={random_state!r} must be an int seed.")
    options = flowsom_options(kwargs)
    check_output_names(sdata, images, clusters, metaclusters, overwrite)
    arrays = [full_resolution(sdata.images[name]).rename(name) for name in images]
    # Every value goes to PixelFlowSOM as given, to be validated there (before any pixel is read); its defaults are
    # the call's.
    estimator = PixelFlowSOM(
        n_clusters=n_clusters,
        fraction=fraction,
        channels=channels,
        chunks=_spatial_chunks(chunks, arrays[0].ndim),
        random_state=random_state,
        **options.estimator_params,
    )
    som, metaclustering = options.models(estimator)
    estimator.set_params(som=som, metaclustering=metaclustering)

    # ---- sample (images and channels are checked before a pixel is read), train, label, write
    with scheduler(client):
        sample = estimator.training_sample(arrays)
        with ThreadPoolExecutor(1) as pool:
            # The sample table's obs names (Python strs: 1.2 s for 10M pixels) are made while the SOM trains.
            obs_names = pool.submit(default_obs_names, sample.n_samples)
            estimator.fit(sample)
            obs_names = obs_names.result()
        stacks = estimator.transform(arrays)

        # The FlowSOM object is built before the labels are computed, not beside them: a failure then leaves sdata and
        # its store untouched, and beside the label pass it competed with the chunk reads (harpy's 10000^2 workload,
        # benchmarks/bench_paper.py: 32.2 s for both at once, 6.4 s + 17.4 s one after the other).
        with phase("build the flowsom.FlowSOM object"):
            nodes, distances = nearest_nodes(sample.values, estimator.codes_, return_distances=True)
            node_metaclusters = estimator.node_metacluster_[nodes]
            fsom = build_flowsom(
                sample.values,
                var_names=[str(c) for c in estimator.channels_],
                clustering=nodes,
                metaclustering=node_metaclusters,
                distances=distances,
                codes=estimator.codes_,
                node_metacluster=estimator.node_metacluster_,
                model=options.fitted_model(estimator, nodes, distances),
                xdim=estimator.xdim,
                ydim=estimator.ydim,
                n_clusters=estimator.n_clusters_,
                rlen=estimator.rlen,
                mst=estimator.mst,
                alpha=tuple(estimator.alpha),
                seed=random_state,
                mad_allowed=options.mad_allowed,
                obs=pd.DataFrame(
                    {instance_key: np.arange(sample.n_samples), region_key: _regions(images, sample.image_index)}
                ),
                obsm={spatial_key: np.asarray(sample.coords, dtype=np.int64)},
                obs_names=obs_names,
            )
            # What harpy does to the table after FlowSOM: int cols_used (zarr cannot store bools), categorical labels
            # (built from the labels: astype("category") would hash every row).
            cell_data = fsom.get_cell_data()
            cell_data.var["cols_used"] = cell_data.var["cols_used"].astype(int)
            n_nodes = estimator.codes_.shape[0]
            cell_data.obs["clustering"] = _categorical(nodes, n_nodes)
            cell_data.obs["metaclustering"] = _categorical(node_metaclusters, n_nodes)

        with phase("label the images and write the labels"):
            write_label_stacks(
                sdata,
                images,
                stacks,
                list(zip(clusters, metaclusters, strict=True)),
                scale_factors=scale_factors,
                # the node -> metacluster map, so that `pixelflowsom relabel` revises these labels later
                attrs={"mapping": (estimator.node_metacluster_ + 1).tolist(), "names": {}},
            )

    mapping = pd.Series(
        estimator.node_metacluster_.astype(np.int64) + 1,
        index=pd.Index(np.arange(1, estimator.codes_.shape[0] + 1, dtype=np.int64)),
        name="metaclustering",
    )
    return sdata, fsom, mapping


def _categorical(labels, n_labels) -> pd.Categorical:
    """Return ``pd.Series(labels).astype("category")``'s values for labels in ``0..n_labels-1``, without hashing.

    As that call gives them: the categories are the labels present, sorted (int64), the codes their positions.
    """
    present = np.flatnonzero(np.bincount(labels, minlength=n_labels))
    code = np.zeros(n_labels, dtype=np.min_scalar_type(-len(present)))  # the signed dtype pandas picks for codes
    code[present] = np.arange(len(present))
    return pd.Categorical.from_codes(code[labels], categories=pd.Index(present.astype(np.int64)))


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
