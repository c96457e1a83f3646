"""The ``pixelflowsom`` command line: ``demo``, ``import``, ``cluster``, ``apply``, ``relabel`` and ``report``."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

#: Errors that mean "the arguments, the store, an image or a channel are wrong": exit code 2, one line.
_USER_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


class _UsageError(Exception):
    """A problem with the command's arguments, reported as one line with exit code 2."""


def _message(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------- shared pieces


def _open_store(path: Path):
    import spatialdata as sd

    if not path.exists():
        raise _UsageError(f"store {str(path)!r} does not exist")
    try:
        return sd.read_zarr(path)
    except Exception as error:
        raise _UsageError(f"{str(path)!r} is not a readable SpatialData zarr store ({_message(error)})") from error


def _output_names(images, given, suffix, what):
    if given is None:
        return [f"{name}{suffix}" for name in images]
    if len(given) != len(images):
        raise _UsageError(f"{what} got {len(given)} name(s) for {len(images)} image(s); give one per --image")
    return list(given)


def _parse_chunks(text):
    if text is None or text == "auto":
        return text
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise _UsageError(
            f"--chunks {text!r} must be 'auto', an int, or comma-separated ints like 20,1024,1024"
        ) from None
    return sizes[0] if len(sizes) == 1 else sizes


def _n_clusters(text):
    """``--n-clusters``: a positive int or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: {text!r} (an integer or 'auto')") from None


def _parse_channels(values):
    """Channel names from the command line; all-digit names become ints (channel coordinates that are ints)."""
    if not values:
        return None
    return [int(v) if v.isdigit() else v for v in values]


@contextmanager
def _computing(args):
    """Run the dask work of a command on its ``--scheduler``, showing its progress on stderr unless ``--quiet``."""
    from ._progress import progress
    from ._store import scheduler

    with _scheduler(args.scheduler) as client, scheduler(client), progress(client, enabled=not args.quiet):
        yield


@contextmanager
def _scheduler(spec: str):
    """Configure dask's local scheduler ``spec``, or connect to the dask.distributed scheduler at address ``spec``.

    Yields the ``distributed.Client`` for an address, None otherwise.
    """
    import dask

    if spec in ("threads", "processes", "synchronous"):
        with dask.config.set(scheduler=spec):
            yield None
        return
    from distributed import Client

    try:
        client = Client(spec)
    except (OSError, TimeoutError, ValueError) as error:
        raise _UsageError(f"--scheduler {spec!r}: no dask scheduler to connect to there ({_message(error)})") from None
    with client:
        print(f"Using the dask cluster at {spec} (dashboard: {client.dashboard_link})")
        yield client


def _say(*lines: str) -> None:
    """Print ``lines`` on stdout, after ending the progress line of the computation that just returned."""
    from ._progress import settle

    settle()
    for line in lines:
        print(line)


def _image_elements(sdata, images, store: Path) -> list:
    """Return the full-resolution arrays of the image elements ``images``, named after them (for messages)."""
    from ._images import full_resolution

    missing = [name for name in images if name not in sdata.images]
    if missing:
        raise _UsageError(f"image(s) {missing} not found in {str(store)!r}; available images: {list(sdata.images)}")
    return [full_resolution(sdata.images[name]).rename(name) for name in images]


def _spatial_chunks(text, ndim):
    """``--chunks`` (with the channel size, like harpy's ``chunks``) as PixelFlowSOM's spatial chunks."""
    chunks = _parse_chunks(text)
    if not isinstance(chunks, tuple):
        return chunks
    if len(chunks) != ndim:
        axes = "c,y,x" if ndim == 3 else "c,z,y,x"
        raise _UsageError(f"--chunks {text} has {len(chunks)} sizes; these images need {ndim}: {axes}")
    return chunks[1:]  # the channel axis is always one chunk


def _label_and_write(args, sdata, store, images, arrays, model) -> tuple[list[str], list[str]]:
    """Label ``arrays`` with the fitted ``model``, write both labels elements of every image into the store.

    Returns the names of the SOM-node and of the metacluster labels elements.
    """
    from ._log import phase
    from ._store import write_label_stacks

    clusters, metaclusters = _outputs(args, images)
    stacks = model.transform(arrays)  # checks every image's channels before anything is computed
    t0 = time.perf_counter()
    som = _flowsom(model)
    # What `relabel` revises later without the model: the node -> metacluster map and the names.
    record = {
        "mapping": (som.node_metacluster_ + 1).tolist(),
        "names": {str(k): v for k, v in getattr(som, "metacluster_names_", {}).items()},
        "run": run_record(args, model, images),  # what `report` shows of the run that made these labels
    }
    with phase("label the images and write the labels"):
        write_label_stacks(sdata, images, stacks, list(zip(clusters, metaclusters, strict=True)), attrs=record)
    _say(
        f"Labelled {len(images)} image(s) in {time.perf_counter() - t0:.1f} s; labels written to {store}:",
        *(
            f"  {image}: SOM nodes -> {c!r}, metaclusters -> {m!r}"
            for image, c, m in zip(images, clusters, metaclusters, strict=True)
        ),
    )
    return clusters, metaclusters


def run_record(args, model, images) -> dict:
    """Describe the run that fitted ``model`` as JSON values kept with its labels (for ``pixelflowsom report``).

    Keys: ``command`` (the command line, as typed), ``images`` (the images the run labelled), ``channels``, ``xdim``,
    ``ydim``, ``codes`` (the SOM codes, ``n_nodes x n_channels``), ``params`` (the PixelFlowSOM's parameters),
    ``preprocessing`` (the PixelPreprocessor's parameters, or None), ``n_samples_fit``, ``quantization_error``,
    ``seconds`` (per phase, the phases so far), ``versions`` and ``n_clusters_choice`` (for ``--n-clusters auto``:
    ``method``, ``n_clusters``, ``criterion`` as ``{column: values}`` over ``k``, and ``stability``; else None).
    """
    import platform
    import shlex

    import dask
    import numpy as np
    import sklearn
    import spatialdata

    from . import __version__

    def plain(params):  # JSON values as they are, anything else (tuples, estimators) as its repr
        return {k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v) for k, v in params.items()}

    som = _flowsom(model)
    params = plain(som.get_params())
    preprocessing = plain(model[0].get_params()) if hasattr(model, "steps") else None
    choice = getattr(som, "n_clusters_choice_", None)
    choice_record = None
    if choice is not None:
        criterion = choice.criterion
        choice_record = {
            "method": choice.method,
            "n_clusters": int(choice.n_clusters),
            "k": [int(k) for k in criterion.index],
            "criterion": {c: [None if np.isnan(v) else float(v) for v in criterion[c]] for c in criterion.columns},
            "stability": None if choice.stability is None else {int(k): float(v) for k, v in choice.stability.items()},
        }
    return {
        "command": shlex.join(["pixelflowsom", *getattr(args, "argv", [])]),
        "images": list(images),
        "channels": [str(c) for c in som.channels_],
        "xdim": int(som.xdim),
        "ydim": int(som.ydim),
        "codes": np.asarray(som.codes_, dtype=np.float64).round(6).tolist(),
        "params": params,
        "preprocessing": preprocessing,
        "n_samples_fit": int(som.n_samples_fit_),
        "quantization_error": float(som.quantization_error_),
        "seconds": dict(getattr(args, "seconds", {})),
        "versions": {
            "pixelflowsom": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "dask": dask.__version__,
            "spatialdata": spatialdata.__version__,
        },
        "n_clusters_choice": choice_record,
    }


@contextmanager
def _phase_seconds():
    """Yield a dict that collects the seconds of every phase the package logs while the block runs.

    The package logs every phase to the ``"pixelflowsom"`` logger at ``INFO``, with the attributes ``phase`` and
    ``seconds`` (its documented interface); a handler on that logger sums them per phase. The logger's level is
    lowered to ``INFO`` for the block only; the handler prints nothing.
    """
    import logging

    seconds = {}

    class Collect(logging.Handler):
        def emit(self, record):
            name = getattr(record, "phase", None)
            if name is not None:
                seconds[name] = round(seconds.get(name, 0.0) + record.seconds, 3)

    logger = logging.getLogger("pixelflowsom")
    handler, level = Collect(level=logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seconds
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _label_counts(sdata, names, n_ids):
    """Pixels of every id ``0..n_ids`` summed over the labels elements ``names`` (one dask computation)."""
    import dask
    import numpy as np

    from ._log import phase
    from ._tables import label_counts

    with phase("count the labelled pixels"):
        counts = dask.compute(*(label_counts(sdata.labels[name].data) for name in names))
    return np.sum([np.pad(c[: n_ids + 1], (0, max(0, n_ids + 1 - len(c)))) for c in counts], axis=0)


def _outputs(args, images) -> tuple[list[str], list[str]]:
    """Return the SOM-node and metacluster labels names of the images (``--cluster-labels`` etc., or defaults)."""
    clusters = _output_names(images, args.cluster_labels, "_som_clusters", "--cluster-labels")
    metaclusters = _output_names(images, args.metacluster_labels, "_metaclusters", "--metacluster-labels")
    return clusters, metaclusters


def _check_outputs(args, sdata, images):
    from ._store import check_output_names

    check_output_names(sdata, images, *_outputs(args, images), args.overwrite, overwrite_hint="pass --overwrite")


def _summarize(sdata, labels, model) -> dict:
    """Print how many pixels every metacluster got (and how many none); return the counts of nodes and metaclusters."""
    som = _flowsom(model)
    clusters, metaclusters = labels
    nodes = _label_counts(sdata, clusters, som.codes_.shape[0])
    metas = _print_metacluster_counts(sdata, metaclusters, som.n_clusters_, getattr(som, "metacluster_names_", {}))
    return {"nodes": nodes, "metaclusters": metas}


def _print_metacluster_counts(sdata, metaclusters, n_clusters, names):
    """Count and print the pixels of every metacluster (named where ``names`` has a name) and the unlabelled ones."""
    metas = _label_counts(sdata, metaclusters, n_clusters)
    total = max(int(metas.sum()), 1)
    _say(
        "Pixels per metacluster: "
        + ", ".join(
            f"{k}{' ' + names[k] if k in names else ''}: {n} ({n / total:.1%})"
            for k, n in enumerate(metas[1:].tolist(), start=1)
        ),
        f"Unlabelled pixels (label 0: a NaN channel, in the image or after preprocessing): {int(metas[0])} "
        f"({metas[0] / total:.1%}).",
    )
    return metas


def _save_pictures(folder: Path, sdata, metacluster_names, model, counts, sample=None, scale="minmax") -> list[Path]:
    """Save the metacluster images, the SOM grid and, with the training sample, the heatmap and ``metaclusters.csv``.

    ``counts`` are the image pixels per SOM node and per metacluster (see :func:`_summarize`); ``scale`` is the
    heatmap's (``--heatmap-scale``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import metacluster_table, pl

    som = _flowsom(model)
    names = dict(getattr(som, "metacluster_names_", {})) or None
    written = _save_metacluster_images(folder, sdata, metacluster_names, names)
    if sample is not None:
        metas = som.predict(sample)
        channels = [str(c) for c in som.channels_]
        path = folder / "metaclusters.csv"
        table = metacluster_table(
            sample.values, metas, channels, counts=counts["metaclusters"], names=names, one_based=False
        )
        table.to_csv(path, float_format="%.4g")
        written.append(path)
        path = folder / "phenotype_heatmap.png"
        heatmap = pl.phenotype_heatmap(
            sample.values,
            metas,
            channels,
            one_based=False,
            counts=counts["metaclusters"],
            names=names,
            scale=scale,
            save=path,
        )
        plt.close(heatmap)
        written.append(path)
    path = folder / "som_grid.png"
    plt.close(pl.som_grid(som, sizes=counts["nodes"][1:], names=names, save=path))
    written.append(path)
    if getattr(som, "n_clusters_choice_", None) is not None:
        path = folder / "n_clusters.png"
        plt.close(pl.n_clusters_criterion(som.n_clusters_choice_, save=path))
        written.append(path)
    return written


def _save_metacluster_images(folder: Path, sdata, metacluster_names, names) -> list[Path]:
    """Save the picture of every metacluster labels element, with the metacluster ``names`` (1-based id -> name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import pl

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in metacluster_names:
        path = folder / f"{name}.png"
        plt.close(pl.metacluster_image(sdata.labels[name], names=names, title=name, save=path))
        written.append(path)
    return written


def _flowsom(model):
    """Return the PixelFlowSOM of a model: itself, or the last step of a Pipeline."""
    return model[-1] if hasattr(model, "steps") else model


def _warn(args, text: str) -> None:
    """One line on stderr: ``pixelflowsom COMMAND: warning: text``."""
    from ._progress import settle

    settle()
    print(f"pixelflowsom {args.command}: warning: {' '.join(text.split())}", file=sys.stderr)


# ----------------------------------------------------------------------------- commands


#: With ``--n-clusters auto``, ``cluster`` warns when fewer resamples of the SOM codes than this choose its number.
MIN_AGREEMENT = 0.5
#: ``cluster`` warns when the training sample has fewer pixels than this per SOM node.
MIN_PIXELS_PER_NODE = 5
#: ``cluster`` (without ``--preprocess``) warns when an integer image's 99th percentile in a channel exceeds this:
#: preprocessed pixels lie in about [0, 1].
RAW_COUNTS_ABOVE = 10.0


def _train(args, sdata, store, images):
    """Fit the model ``cluster`` asks for on the images of the store; returns the model, sample and arrays.

    The model is a PixelFlowSOM, or with ``--preprocess`` a ``Pipeline(PixelPreprocessor, PixelFlowSOM)``. Every
    argument and input is checked before the outputs are, and the outputs before any pixel is read. Runs on the
    current dask scheduler (see :func:`_computing`).
    """
    import warnings

    from sklearn.pipeline import Pipeline

    from . import PixelFlowSOM, PixelPreprocessor
    from ._log import phase

    arrays = _image_elements(sdata, images, store)
    channels = _parse_channels(args.channels)
    som = PixelFlowSOM(
        n_clusters=args.n_clusters,
        max_clusters=args.max_clusters,
        fraction=args.fraction,
        n_samples=args.n_samples,
        channels=None if args.preprocess else channels,
        chunks=_spatial_chunks(args.chunks, arrays[0].ndim),
        random_state=args.seed,
    )
    # Options not given keep the estimator's defaults (they live there only).
    som.set_params(
        **{
            name: getattr(args, name)
            for name in ("xdim", "ydim", "som", "n_clusters_method")
            if getattr(args, name) is not None
        }
    )
    pre = None
    if args.preprocess:
        pre = PixelPreprocessor(channels=channels, **_preprocess_params(args))
        pre.check_input(arrays)
        som.check_input()
    else:
        som.check_input(arrays)
    _check_outputs(args, sdata, images)
    inputs = arrays
    if pre is not None:
        with phase("preprocess: channel percentiles"):
            pre.fit(arrays)
        inputs = pre.transform(arrays)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Only .* rows were sampled", category=UserWarning)
        sample = som.training_sample(inputs)
        _check_sample(args, som, sample, arrays, preprocessed=pre is not None)
        som.fit(sample)
    model = som if pre is None else Pipeline([("preprocess", pre), ("flowsom", som)])
    return model, sample, arrays


def _preprocess_params(args) -> dict:
    """Return PixelPreprocessor's parameters from ``--p``, ``--p-sum``, ... (harpy's names).

    Options not given keep the estimator's defaults.
    """
    given = {"q": args.p, "q_sum": args.p_sum, "q_post": args.p_post, "sigma": args.sigma, "cap_max": args.cap_max}
    params = {name: (None if value == "none" else value) for name, value in given.items() if value is not None}
    if args.no_norm_sum:
        params["norm_sum"] = False
    return params


def _check_sample(args, som, sample, arrays, *, preprocessed) -> None:
    """Warn (one line) about a training sample too small for the grid, or raw counts clustered unpreprocessed."""
    import numpy as np

    n_nodes = som.xdim * som.ydim
    if sample.n_samples < MIN_PIXELS_PER_NODE * n_nodes:
        given = f"--fraction {args.fraction}" if args.fraction is not None else f"--n-samples {args.n_samples}"
        given = given if args.fraction is not None or args.n_samples is not None else "the default --fraction"
        _warn(
            args,
            f"{given} gives {sample.n_samples} training pixels for a {som.xdim}x{som.ydim} SOM ({n_nodes} nodes, "
            f"fewer than {MIN_PIXELS_PER_NODE} per node): the SOM cannot learn the phenotypes. Raise --fraction, pass "
            "--n-samples N, or use a smaller grid (--xdim, --ydim).",
        )
    integer = [a.name for a in arrays if a.dtype.kind in "biu"]
    if preprocessed or not integer or sample.n_samples == 0:
        return
    p99 = np.percentile(sample.values[:: max(1, sample.n_samples // 100_000)], 99, axis=0)
    worst = int(np.argmax(p99))
    if p99[worst] > RAW_COUNTS_ABOVE:
        _warn(
            args,
            f"image(s) {integer} hold raw integer counts (99th percentile {p99[worst]:.4g} in channel "
            f"{str(sample.channels[worst])!r}; preprocessed pixels lie in about [0, 1]). On raw counts the brightest "
            "channels decide the clusters: add --preprocess (harpy's blur, pixel-sum and percentile normalisation).",
        )


def _demo(args) -> int:
    import numpy as np
    import spatialdata as sd
    from sklearn.metrics import adjusted_rand_score
    from spatialdata.models import Image2DModel

    from ._synthetic import make_synthetic_image

    t0 = time.perf_counter()
    out = Path(args.out)
    store = out / "demo.zarr"
    image, truth = make_synthetic_image(
        (args.size, args.size), n_channels=args.channels, n_phenotypes=args.phenotypes, seed=args.seed
    )
    print(
        f"Synthetic multiplexed image: {args.channels} channels x {args.size} x {args.size} pixels, "
        f"{args.phenotypes} known phenotypes (seed {args.seed})."
    )
    element = Image2DModel.parse(
        image.values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks={"c": args.channels, "y": 256}
    )
    out.mkdir(parents=True, exist_ok=True)
    sd.SpatialData(images={"tissue": element}).write(store, overwrite=True)
    sdata = sd.read_zarr(store)
    # What `pixelflowsom cluster STORE --image tissue --n-clusters PHENOTYPES ...` does, with its defaults.
    sampling = [] if args.fraction is None else ["--fraction", repr(args.fraction)]
    sampling += [] if args.n_samples is None else ["--n-samples", str(args.n_samples)]
    cluster_args = build_parser().parse_args(
        ["cluster", str(store), "--image", "tissue", "--n-clusters", str(args.phenotypes), "--seed", str(args.seed)]
        + sampling
    )
    with _computing(cluster_args):
        model, sample, arrays = _train(cluster_args, sdata, store, ["tissue"])
        labels = _label_and_write(cluster_args, sdata, store, ["tissue"], arrays, model)
        print(
            f"Trained a {model.xdim}x{model.ydim} SOM on {model.n_samples_fit_} sampled pixels "
            f"({model.n_samples_fit_ / args.size**2:.1%}), {args.phenotypes} metaclusters; labelled "
            f"{args.size**2} pixels."
        )
        counts = _summarize(sdata, labels, model)
    metaclusters = np.asarray(sdata.labels["tissue_metaclusters"].values)
    ari = adjusted_rand_score(truth.ravel(), metaclusters.ravel())
    pictures = _save_pictures(out / "pictures", sdata, labels[1], model, counts, sample)
    print(f"Adjusted Rand index of the metaclusters against the known phenotypes: {ari:.3f}")
    print(f"SpatialData store (image 'tissue', labels 'tissue_som_clusters', 'tissue_metaclusters'): {store}")
    for path in pictures:
        print(f"{'Table' if path.suffix == '.csv' else 'Picture'}: {path}")
    print(f"Done in {time.perf_counter() - t0:.1f} s.")
    return 0


#: Suffixes of pickle files, which ``cluster --save-model`` does not write (it writes skops files).
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def _cluster(args) -> int:
    from . import save_model

    store = Path(args.store)
    sdata = _open_store(store)
    images = args.image
    if args.save_model is not None:
        if not Path(args.save_model).parent.exists():
            raise _UsageError(f"--save-model: folder {str(Path(args.save_model).parent)!r} does not exist")
        if Path(args.save_model).suffix.lower() in PICKLE_SUFFIXES:
            raise _UsageError(
                f"--save-model {args.save_model!r}: models are saved in skops' format, which loads without running "
                f"code from the file; name it {str(Path(args.save_model).with_suffix('.skops'))!r}"
            )
    t0 = time.perf_counter()
    with _computing(args):
        model, sample, arrays = _train(args, sdata, store, images)
        som = _flowsom(model)
        chosen, agreement = "", None
        if som.n_clusters == "auto":
            stability = som.n_clusters_choice_.stability
            agreement = None if stability is None else float(stability.get(som.n_clusters_, 0.0))
            chosen = f" (chosen from the data by the {som.n_clusters_choice_.method} rule"
            chosen += ")" if agreement is None else f"; {agreement:.0%} of resamples of the SOM codes agree)"
        preprocessed = " preprocessed" if args.preprocess else ""
        _say(
            f"Trained a {som.xdim}x{som.ydim} SOM ({som.som}) on {som.n_samples_fit_}{preprocessed} sampled pixels "
            f"of {len(images)} image(s), channels {_channels_text(som.channels_)}, {som.n_clusters_} metaclusters"
            f"{chosen}, in {time.perf_counter() - t0:.1f} s."
        )
        if agreement is not None and agreement < MIN_AGREEMENT:
            _warn(
                args,
                f"the number of metaclusters is not well determined by these pixels: only {agreement:.0%} of "
                f"resamples of the SOM codes choose {som.n_clusters_} (see n_clusters.png). Read the heatmap and merge "
                "metaclusters with `pixelflowsom relabel`, or choose --n-clusters yourself.",
            )
        labels = _label_and_write(args, sdata, store, images, arrays, model)
        counts = _summarize(sdata, labels, model)
    if args.save_model is not None:
        save_model(model, args.save_model)
        carried = " (with its preprocessing)" if args.preprocess else ""
        print(f"Model{carried}: {args.save_model}")
    folder = _pictures_folder(args, store)
    for path in _save_pictures(folder, sdata, labels[1], model, counts, sample, args.heatmap_scale):
        print(f"{'Table' if path.suffix == '.csv' else 'Picture'}: {path}")
    if not args.no_report:
        t0 = time.perf_counter()
        with _computing(args):
            path = _write_report(args, store, images, *labels)
        print(f"Report: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _channels_text(channels) -> str:
    return "[" + ", ".join(str(c) for c in channels) + "]"


def _load_model(path: str, trust_pickle: bool):
    """Load a fitted PixelFlowSOM, or a Pipeline ending in one, saved by ``cluster --save-model``.

    A skops file loads with pixelflowsom's trusted types only; a pickle (an older ``--save-model``, or ``joblib.dump``)
    only with ``--trust-pickle``, since loading a pickle runs whatever code the file names.
    """
    import zipfile

    from sklearn.pipeline import Pipeline

    from . import PixelFlowSOM, load_model, untrusted_types

    if not Path(path).is_file():
        raise _UsageError(f"--model {path!r} does not exist")
    if zipfile.is_zipfile(path):
        refused = untrusted_types(path)
        if refused:
            raise _UsageError(
                f"--model {path!r} names types that pixelflowsom does not trust: {refused}. Loading them could run "
                "code from the file; if you trust its author, load it in Python with "
                "pixelflowsom.load_model(file, trusted=[...])"
            )
        model = load_model(path)
    elif not trust_pickle:
        raise _UsageError(
            f"--model {path!r} is a pickle, not a skops file: loading a pickle runs whatever code its author put in "
            "it. Pass --trust-pickle only if you trust where the file comes from, or ask for a skops file "
            "(cluster --save-model model.skops)"
        )
    else:
        import joblib

        _say(f"Loading the pickle {path!r} (--trust-pickle): it can run code; save it as a skops file to share it.")
        model = joblib.load(path)
    som = model[-1] if isinstance(model, Pipeline) else model
    if not isinstance(som, PixelFlowSOM) or not hasattr(som, "codes_") or not hasattr(som, "channels_"):
        raise _UsageError(
            f"--model {path!r} is not a PixelFlowSOM fitted on images, nor a Pipeline ending in one (save one with "
            "cluster --save-model)"
        )
    return model


#: ``apply`` compares the 99th percentiles of the channels of this many pixels, drawn from a central window of at
#: most ``PROBE_WINDOW`` pixels per spatial axis of every image, with the training pixels'.
PROBE_PIXELS = 20_000
PROBE_WINDOW = 1024
#: ``apply`` refuses (without ``--force``) images whose channels' 99th percentiles differ from the training pixels' by
#: more than this factor in the median over the channels.
FAR_FACTOR = 10.0


def _check_like_training(args, model, arrays) -> None:
    """Refuse images whose pixels look nothing like the training pixels, e.g. raw counts for preprocessed ones.

    Called unless ``--force``.
    """
    import numpy as np
    from sklearn.base import clone

    som = _flowsom(model)
    windows = []
    for array in arrays:
        window = {}
        for dim in array.dims[1:]:
            size = array.sizes[dim]
            start = max(0, (size - PROBE_WINDOW) // 2)
            window[dim] = slice(start, start + PROBE_WINDOW)
        windows.append(array.isel(window))
    inputs = model[:-1].transform(windows) if hasattr(model, "steps") else windows
    probe = clone(som).set_params(channels=list(som.channels_), fraction=None, n_samples=PROBE_PIXELS, random_state=0)
    sample = probe.training_sample(inputs)
    if sample.n_samples == 0:
        return
    trained = som.channel_percentiles_[-1]
    seen = np.percentile(sample.values, 99, axis=0)
    floor = 1e-3 * max(float(np.max(trained)), np.finfo(np.float32).tiny)
    keep = (trained > floor) | (seen > floor)
    if not keep.any():
        return
    log_ratio = np.log10(np.maximum(seen, floor) / np.maximum(trained, floor))
    if np.median(np.abs(log_ratio[keep])) <= np.log10(FAR_FACTOR):
        return
    order = np.argsort(-np.abs(np.where(keep, log_ratio, 0)))[:3]
    examples = "; ".join(f"{som.channels_[i]}: {seen[i]:.4g} here, {trained[i]:.4g} in training" for i in order)
    carried = "applies the preprocessing it was trained with" if hasattr(model, "steps") else "carries no preprocessing"
    raise _UsageError(
        f"the images' pixels are far from the training pixels (99th percentiles differ by more than {FAR_FACTOR:g}x in "
        f"most channels; {examples}). This model {carried}: label images prepared as its training images were, or "
        "pass --force to label them anyway"
    )


def _apply(args) -> int:
    store = Path(args.store)
    model = _load_model(args.model, args.trust_pickle)
    som = _flowsom(model)
    sdata = _open_store(store)
    images = args.image
    arrays = _image_elements(sdata, images, store)
    som.set_params(chunks=_spatial_chunks(args.chunks, arrays[0].ndim))
    (model[0] if hasattr(model, "steps") else som).check_input(arrays)  # the model's channels, by name
    _check_outputs(args, sdata, images)
    with _computing(args):
        if not args.force:
            _check_like_training(args, model, arrays)
        preprocessing = " after the model's preprocessing" if hasattr(model, "steps") else ""
        _say(f"Labelling with the model's channels {_channels_text(som.channels_)}{preprocessing}.")
        labels = _label_and_write(args, sdata, store, images, arrays, model)
        counts = _summarize(sdata, labels, model)
    for path in _save_pictures(_pictures_folder(args, store), sdata, labels[1], model, counts):
        print(f"Picture: {path}")
    return 0


def _import(args) -> int:
    import spatialdata as sd

    from . import import_images

    store = Path(args.out)
    if not store.parent.exists():
        raise _UsageError(f"--out: folder {str(store.parent)!r} does not exist")
    t0 = time.perf_counter()
    with _computing(args):
        names = import_images(
            [Path(f) for f in args.files],
            store,
            names=args.names,
            channels=args.channel_names,
            chunks=_parse_chunks(args.chunks),
            overwrite=args.overwrite,
            overwrite_hint="pass --overwrite",
        )
    sdata = sd.read_zarr(store)
    _say(f"Imported {len(names)} image(s) into {store} in {time.perf_counter() - t0:.1f} s:")
    for name in names:
        image = sdata.images[name]
        sizes = " x ".join(str(image.sizes[d]) for d in image.dims[1:])
        _say(f"  {name}: {image.sizes['c']} channels, {sizes} pixels, {image.dtype}: {_channels_text(image.c.values)}")
    _say(
        f"Next: pixelflowsom cluster {store} --image {names[0]} --preprocess --channels CHANNEL ... (lineage markers; "
        "see pixelflowsom cluster --help)"
    )
    return 0


def _id_pairs(values, option: str, value_kind: str) -> dict:
    """``--move 12=3`` / ``--name 2=tumour`` values as a dict; keys are 1-based ids."""
    out = {}
    for text in values or ():
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isdigit() or (value_kind == "id" and not value.strip().isdigit()):
            example = "12=3" if value_kind == "id" else "2=tumour"
            raise _UsageError(f"{option} {text!r} must be ID={value_kind.upper()}, e.g. {option} {example}")
        if int(key) in out:
            raise _UsageError(f"{option} gives {key} twice")
        out[int(key)] = int(value) if value_kind == "id" else value.strip()
    return out


def _relabel(args) -> int:
    import numpy as np

    from ._revising import read_pixie_mapping, revise_mapping, write_pixie_mapping
    from ._store import read_label_attrs, relabel_metaclusters

    store = Path(args.store)
    sdata = _open_store(store)
    images = args.image
    clusters, metaclusters = _outputs(args, images)
    missing = [name for name in clusters if name not in sdata.labels]
    if missing:
        raise _UsageError(
            f"SOM-node labels element(s) {missing} not found in {str(store)!r} (cluster or apply writes them; "
            f"name others with --cluster-labels); labels elements: {sorted(sdata.labels)}"
        )
    merge = [[int(i) for i in group] for group in args.merge or ()]
    move = _id_pairs(args.move, "--move", "id")
    new_names = _id_pairs(args.name, "--name", "text")
    for option in ("mapping", "export_mapping"):
        path = getattr(args, option)
        if path is not None and option == "export_mapping" and not Path(path).parent.exists():
            raise _UsageError(f"--export-mapping: folder {str(Path(path).parent)!r} does not exist")
    recorded = [read_label_attrs(sdata, name) if name in sdata.labels else None for name in metaclusters]
    if args.mapping is not None:
        n_nodes = next((len(a["mapping"]) for a in recorded if a and "mapping" in a), None)
        base, base_names = read_pixie_mapping(args.mapping, n_nodes=n_nodes)
    else:
        found = [a for a in recorded if a and "mapping" in a]
        if len(found) < len(recorded):
            lacking = [m for m, a in zip(metaclusters, recorded, strict=True) if not (a and "mapping" in a)]
            raise _UsageError(
                f"labels element(s) {lacking} record no node -> metacluster mapping (written by another tool or an "
                "older version); give one with --mapping FILE.csv"
            )
        base = np.asarray(found[0]["mapping"], dtype=np.int64)
        if any(not np.array_equal(np.asarray(a["mapping"]), base) for a in found[1:]):
            raise _UsageError(
                "the images' metaclusters come from different mappings (different models); relabel them separately"
            )
        base_names = {int(k): v for k, v in (found[0].get("names") or {}).items()}
    mapping, names, renumbering = revise_mapping(base, merge=merge, move=move, names=new_names, old_names=base_names)
    changed = args.mapping is not None or merge or move or new_names
    if changed:
        _check_outputs_relabel(sdata, images, metaclusters)
        attrs = {"mapping": mapping.tolist(), "names": {str(k): v for k, v in names.items()}}
        t0 = time.perf_counter()
        with _computing(args):
            relabel_metaclusters(sdata, clusters, metaclusters, mapping, attrs=attrs)
            _say(
                f"Relabelled {len(images)} image(s) in {time.perf_counter() - t0:.1f} s: "
                + ", ".join(f"{m!r} from {c!r}" for c, m in zip(clusters, metaclusters, strict=True))
            )
            moved = {old: new for old, new in renumbering.items() if old != new}
            if moved:
                _say("Metaclusters renumbered (old -> new): " + ", ".join(f"{o} -> {n}" for o, n in moved.items()))
            _print_metacluster_counts(sdata, metaclusters, int(mapping.max()), names)
        for path in _save_metacluster_images(_pictures_folder(args, store), sdata, metaclusters, names or None):
            print(f"Picture: {path}")
        if not args.no_report:
            with _computing(args):
                print(f"Report: {_write_report(args, store, images, clusters, metaclusters)}")
    else:
        _say("Nothing to change (no --merge, --move, --name or --mapping).")
    if args.export_mapping is not None:
        write_pixie_mapping(args.export_mapping, mapping, names)
        print(f"Mapping (ark Pixie's CSV): {args.export_mapping}")
    return 0


def _check_outputs_relabel(sdata, images, metaclusters):
    """Check that the metacluster labels may be written: valid names, not images or other non-labels elements."""
    from ._store import check_output_names

    # Passed as the metacluster outputs (the SOM-node elements are inputs here): overwriting them is the point.
    check_output_names(sdata, images, [], metaclusters, True, overwrite_hint="pass --overwrite")


def _report(args) -> int:
    store = Path(args.store)
    _open_store(store)  # a readable store, or exit 2
    clusters, metaclusters = _outputs(args, args.image)
    with _computing(args):
        path = _write_report(args, store, args.image, clusters, metaclusters, out=args.out)
    print(f"Report: {path}")
    return 0


def _write_report(args, store, images, clusters, metaclusters, *, out=None) -> Path:
    """Write the HTML report of the images' labels (``pixelflowsom.report``); return its path."""
    from . import report
    from ._log import phase

    with phase("write the report"):
        return report(
            store,
            images,
            out=out,
            cluster_labels=clusters,
            metacluster_labels=metaclusters,
            seconds=dict(getattr(args, "seconds", {})),
        )


def _pictures_folder(args, store: Path) -> Path:
    return Path(args.pictures) if args.pictures else store.parent / f"{store.stem}_pictures"


# ----------------------------------------------------------------------------- parser


def _add_labels(parser, image_help: str) -> None:
    """Add the store, its images and the names of their labels elements, as every command on a store takes them."""
    parser.add_argument("store", help="SpatialData zarr store (e.g. sample.zarr)")
    parser.add_argument("--image", action="append", required=True, metavar="NAME", help=image_help)
    parser.add_argument(
        "--cluster-labels",
        nargs="+",
        metavar="NAME",
        help="names of the SOM-node labels elements, one per image (default: IMAGE_som_clusters)",
    )
    parser.add_argument(
        "--metacluster-labels",
        nargs="+",
        metavar="NAME",
        help="names of the metacluster labels elements, one per image (default: IMAGE_metaclusters)",
    )


def _add_dask(parser) -> None:
    """Add ``--scheduler`` and ``--quiet``: where the dask work of a command runs, and whether its progress shows."""
    parser.add_argument(
        "--scheduler",
        default="threads",
        help="dask scheduler: threads (default), processes, or the ADDRESS of a dask.distributed scheduler",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="show no progress of the dask computations (shown on stderr otherwise)"
    )


def _add_common(parser, *, training):
    from . import PixelFlowSOM

    _add_labels(parser, "image element to label (repeat for several)")
    parser.add_argument(
        "--chunks", help="chunks for labelling: 'auto', one int, or c,y,x sizes (c,z,y,x for 3D), e.g. 20,1024,1024"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing labels elements of those names")
    _add_dask(parser)
    parser.add_argument("--pictures", metavar="DIR", help="where to save the pictures (default: STORE_pictures/)")
    if training:
        parser.add_argument(
            "--channels", nargs="+", metavar="CHANNEL", help="channels to cluster on (default: all of the first image)"
        )
        _add_sampling(parser)
        parser.add_argument(
            "--n-clusters",
            type=_n_clusters,
            default=5,
            help="number of metaclusters, or 'auto' to choose it from the data (default: 5)",
        )
        parser.add_argument(
            "--max-clusters",
            type=int,
            metavar="N",
            help="with --n-clusters auto: the largest number of metaclusters tried (default: 20)",
        )
        parser.add_argument(
            "--n-clusters-method",
            choices=("auto", "knee", "elbow", "delta_area"),
            help="with --n-clusters auto: the rule (default: auto, the knee of the log within-cluster sum of squares; "
            "elbow: R FlowSOM's; delta_area: ConsensusClusterPlus's, which needs a consensus metaclustering)",
        )
        defaults = PixelFlowSOM().get_params()
        parser.add_argument("--xdim", type=int, help=f"SOM grid width (default: {defaults['xdim']})")
        parser.add_argument("--ydim", type=int, help=f"SOM grid height (default: {defaults['ydim']})")
        parser.add_argument("--seed", type=int, default=100, help="random seed (default: 100, as harpy)")
        parser.add_argument(
            "--som",
            choices=("online", "hybrid", "batch"),
            help="SOM algorithm: FlowSOM's online SOM (the default), the batch SOM finished by online passes, or the "
            "batch SOM",
        )
        parser.add_argument(
            "--save-model",
            metavar="FILE",
            help="save the fitted model, with its preprocessing if --preprocess, for `apply`, in skops' format "
            "(loads without running code from the file: safe to share), e.g. model.skops",
        )
        parser.add_argument(
            "--heatmap-scale",
            choices=("minmax", "zscore"),
            default="minmax",
            help="the heatmap's colours: every channel's medians scaled to [0, 1] across the metaclusters (minmax, the "
            "default), or z-scored across them (zscore)",
        )
        _add_preprocessing(parser)
        _add_no_report(parser)
    else:
        parser.add_argument(
            "--force",
            action="store_true",
            help="label images whose pixels are far from the training pixels (refused otherwise: e.g. raw counts "
            "given to a model trained on preprocessed pixels)",
        )


def _add_no_report(parser):
    parser.add_argument(
        "--no-report", action="store_true", help="do not write the HTML report next to the store (see `report`)"
    )


def _add_preprocessing(parser):
    """``--preprocess`` and harpy's ``pixel_clustering_preprocess`` options, passed on to PixelPreprocessor."""
    from . import PixelPreprocessor

    defaults = PixelPreprocessor().get_params()
    group = parser.add_argument_group(
        "preprocessing (harpy.im.pixel_clustering_preprocess's steps and option names; the saved model carries it)"
    )
    group.add_argument(
        "--preprocess",
        action="store_true",
        help="preprocess the --channels before clustering: divide every channel by its --p percentile, blur "
        "(--sigma), drop pixels whose channel sum is below the --p-sum percentile, divide every pixel by its channel "
        "sum, divide every channel by its --p-post percentile, cap at --cap-max",
    )
    for option, name, what in (
        ("--p", "q", "percentile every channel is divided by first"),
        ("--p-sum", "q_sum", "percentile of the pixels' channel sums below which a pixel is left unlabelled"),
        ("--p-post", "q_post", "percentile every channel is divided by last"),
    ):
        group.add_argument(
            option, type=_number_or_none, metavar="P", help=f"{what}, or none (default: {defaults[name]})"
        )
    group.add_argument(
        "--sigma",
        type=_number_or_none,
        metavar="PIXELS",
        help=f"standard deviation of the Gaussian blur, or none (default: {defaults['sigma']})",
    )
    group.add_argument("--no-norm-sum", action="store_true", help="do not divide every pixel by its channel sum")
    group.add_argument("--cap-max", type=float, metavar="VALUE", help="upper bound of the values (default: none)")


def _number_or_none(text):
    """Parse a float, or ``none``."""
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: {text!r} (a number or 'none')") from None


def _add_sampling(parser):
    """``--fraction`` and ``--n-samples``: passed to PixelFlowSOM as given (None: not given), which checks them."""
    from ._sampling import DEFAULT_FRACTION

    parser.add_argument(
        "--fraction",
        type=float,
        help=f"fraction of the pixels of every image to train on, in (0, 1] (default: {DEFAULT_FRACTION}, unless "
        "--n-samples is given)",
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        metavar="N",
        help="number of pixels to train on in all, split over the images in proportion to their pixels (instead of "
        "--fraction)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (``--help`` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``pixelflowsom`` command."""
    from . import __version__

    parser = _Parser(
        prog="pixelflowsom",
        description="Fast FlowSOM pixel clustering of multiplexed tissue images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="cluster a synthetic multiplexed image with known phenotypes (needs no data)",
        description="Generate a seeded synthetic multiplexed image with known phenotypes, write it to a SpatialData "
        "zarr store, cluster it as `pixelflowsom cluster` does, write the labels into the store, save pictures "
        "and report how well the metaclusters recover the phenotypes (adjusted Rand index).",
    )
    demo.add_argument("--out", default="pixelflowsom-demo", help="output folder (default: ./pixelflowsom-demo)")
    demo.add_argument("--size", type=int, default=512, help="image height and width in pixels (default: 512)")
    demo.add_argument("--channels", type=int, default=12, help="number of channels (default: 12)")
    demo.add_argument(
        "--phenotypes", type=int, default=6, help="number of phenotypes, background included (default: 6)"
    )
    _add_sampling(demo)
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_demo)

    cluster = sub.add_parser(
        "cluster",
        help="cluster the pixels of images in a SpatialData store and write the labels into it",
        description="Train FlowSOM on a sample of the pixels of the images, label every pixel, write the SOM-node "
        "and metacluster labels elements into the store (as harpy.im.flowsom does) and save pictures next to it.",
    )
    _add_common(cluster, training=True)
    cluster.set_defaults(func=_cluster)

    importer = sub.add_parser(
        "import",
        help="write TIFF / OME-TIFF / .npz / .npy images into a new SpatialData store",
        description="Read multiplexed images (c, y, x) and write them as image elements of a new SpatialData zarr "
        "store, one element per file, named after it, with its channel names: OME-TIFF channel names, a folder of "
        "single-channel TIFFs (one file per channel, named after it), .npz with 'channels' and one image array, "
        "TIFF or .npy with --channel-names.",
    )
    importer.add_argument("files", nargs="+", metavar="FILE", help="image files or folders of per-channel TIFFs")
    importer.add_argument("--out", required=True, metavar="STORE", help="the new SpatialData zarr store")
    importer.add_argument(
        "--names", nargs="+", metavar="NAME", help="element names, one per file (default: file names)"
    )
    importer.add_argument(
        "--channel-names",
        nargs="+",
        metavar="NAME",
        help="the channel names of every file, in its channel order (they replace the file's own): for TIFF and .npy "
        "files, which name none",
    )
    importer.add_argument("--chunks", help="chunks of the elements: 'auto', one int, or c,y,x sizes")
    importer.add_argument("--overwrite", action="store_true", help="replace the store if it exists")
    importer.add_argument("--quiet", action="store_true", help="show no progress")
    importer.set_defaults(func=_import, scheduler="threads")

    reporter = sub.add_parser(
        "report",
        help="write the HTML report of a run from what the store holds",
        description="Write one self-contained HTML page (pictures embedded; opens without network access) about the "
        "labels of the images: metacluster images, channel medians per metacluster and per SOM node, the SOM grid, "
        "metacluster proportions per FOV, FOVs whose channel medians drift from the cohort's, the criterion of "
        "--n-clusters auto, and the run (parameters, timings, versions, command). It reads only the store: the "
        "labels elements, the images (once) and what cluster recorded with the labels.",
    )
    _add_labels(reporter, "image to report on (repeat for several)")
    reporter.add_argument("--out", metavar="FILE.html", help="the report (default: STORE_report.html next to STORE)")
    _add_dask(reporter)
    reporter.set_defaults(func=_report)

    relabel = sub.add_parser(
        "relabel",
        help="merge, move and name metaclusters of a store's labels, without the model or the images",
        description="Rewrite the metacluster labels elements of the images from their SOM-node labels elements and a "
        "revised node -> metacluster mapping: the one the store records (written by cluster, apply and relabel), "
        "revised by --merge, --move and --name, or one from --mapping (ark Pixie's pixel mapping CSV). IDs are as "
        "written in the labels elements (1-based). Merged metaclusters take the smallest id of their group; then ids "
        "are renumbered densely, in their order. Crash-safe: every element stays old or new, whole.",
    )
    _add_labels(relabel, "image whose labels to revise (repeat for several)")
    relabel.add_argument(
        "--merge",
        nargs="+",
        action="append",
        type=int,
        metavar="ID",
        help="metaclusters to merge into one, e.g. --merge 2 5 (repeat for several groups)",
    )
    relabel.add_argument(
        "--move", action="append", metavar="NODE=ID", help="move a SOM node to a metacluster (ID: existing or k+1)"
    )
    relabel.add_argument(
        "--name", action="append", metavar="ID=TEXT", help="name a metacluster, by its id after the revision"
    )
    relabel.add_argument("--mapping", metavar="FILE.csv", help="the mapping to apply (ark Pixie's pixel mapping CSV)")
    relabel.add_argument(
        "--export-mapping", metavar="FILE.csv", help="write the (revised) mapping as ark Pixie's pixel mapping CSV"
    )
    relabel.add_argument("--pictures", metavar="DIR", help="where to save the pictures (default: STORE_pictures/)")
    _add_dask(relabel)
    _add_no_report(relabel)
    relabel.set_defaults(func=_relabel)

    apply = sub.add_parser(
        "apply",
        help="label images of a store with a model saved by `cluster --save-model`",
        description="Label every pixel of the images with a saved model and write the labels elements into the store.",
    )
    _add_common(apply, training=False)
    apply.add_argument("--model", required=True, metavar="FILE", help="model saved by `cluster --save-model`")
    apply.add_argument(
        "--trust-pickle",
        action="store_true",
        help="also load a model saved as a pickle (joblib): loading a pickle runs whatever code is in it, so only for "
        "files from someone you trust",
    )
    apply.set_defaults(func=_apply)
    return parser


def main(argv=None) -> int:
    """Run the ``pixelflowsom`` command line; returns the exit code."""
    import logging
    import warnings

    # Messages of the storage libraries (ome-zarr's "no parent found" for every labels element, deprecations) say
    # nothing to someone running a command.
    logging.getLogger("ome_zarr").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    with _phase_seconds() as args.seconds:
        try:
            return args.func(args)
        except _UsageError as error:
            parser.exit(2, f"pixelflowsom {args.command}: error: {error}\n")
        except _USER_ERRORS as error:
            parser.exit(2, f"pixelflowsom {args.command}: error: {_message(error)}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
