"""The ``pixelflowsom`` command line: ``demo``, ``cluster`` and ``apply``."""

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


def _label_and_write(args, sdata, store, images, arrays, model) -> list[str]:
    """Label ``arrays`` with the fitted ``model``, write both labels elements of every image into the store.

    Returns the names of the metacluster labels elements.
    """
    from ._store import write_label_stacks

    clusters, metaclusters = _outputs(args, images)
    stacks = model.transform(arrays)  # checks every image's channels before anything is computed
    t0 = time.perf_counter()
    write_label_stacks(sdata, images, stacks, list(zip(clusters, metaclusters, strict=True)))
    _say(
        f"Labelled {len(images)} image(s) in {time.perf_counter() - t0:.1f} s; labels written to {store}:",
        *(
            f"  {image}: SOM nodes -> {c!r}, metaclusters -> {m!r}"
            for image, c, m in zip(images, clusters, metaclusters, strict=True)
        ),
    )
    return metaclusters


def _outputs(args, images) -> tuple[list[str], list[str]]:
    """Return the SOM-node and metacluster labels names of the images (``--cluster-labels`` etc., or defaults)."""
    clusters = _output_names(images, args.cluster_labels, "_som_clusters", "--cluster-labels")
    metaclusters = _output_names(images, args.metacluster_labels, "_metaclusters", "--metacluster-labels")
    return clusters, metaclusters


def _check_outputs(args, sdata, images):
    from ._store import check_output_names

    check_output_names(sdata, images, *_outputs(args, images), args.overwrite)


def _save_pictures(folder: Path, sdata, metacluster_names, model, sample=None) -> list[Path]:
    """Save the metacluster images and, with the training sample, its phenotype heatmap and the SOM grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from . import pl

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in metacluster_names:
        path = folder / f"{name}.png"
        plt.close(pl.metacluster_image(sdata.labels[name], title=name, save=path))
        written.append(path)
    sizes = None
    if sample is not None:
        nodes, metas = model.transform(sample).T
        sizes = np.bincount(nodes, minlength=model.codes_.shape[0])
        path = folder / "phenotype_heatmap.png"
        channels = [str(c) for c in model.channels_]
        plt.close(pl.phenotype_heatmap(sample.values, metas, channels, one_based=False, save=path))
        written.append(path)
    path = folder / "som_grid.png"
    plt.close(pl.som_grid(model, sizes=sizes, save=path))
    written.append(path)
    if getattr(model, "n_clusters_choice_", None) is not None:
        path = folder / "n_clusters.png"
        plt.close(pl.n_clusters_criterion(model.n_clusters_choice_, save=path))
        written.append(path)
    return written


# ----------------------------------------------------------------------------- commands


def _train(args, sdata, store, images):
    """Fit a PixelFlowSOM on the images of the store as ``cluster`` asks; returns the model, sample and arrays.

    Runs on the current dask scheduler (see :func:`_computing`).
    """
    from . import PixelFlowSOM

    arrays = _image_elements(sdata, images, store)
    _check_outputs(args, sdata, images)
    model = PixelFlowSOM(
        n_clusters=args.n_clusters,
        max_clusters=args.max_clusters,
        fraction=args.fraction,
        n_samples=args.n_samples,
        channels=_parse_channels(args.channels),
        chunks=_spatial_chunks(args.chunks, arrays[0].ndim),
        random_state=args.seed,
    )
    # Options not given keep the estimator's defaults (they live there only).
    model.set_params(
        **{name: getattr(args, name) for name in ("xdim", "ydim", "som") if getattr(args, name) is not None}
    )
    sample = model.training_sample(arrays)  # checks parameters, images and channels before reading a pixel
    model.fit(sample)
    return model, sample, arrays


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
        + [*sampling, "--quiet"]
    )
    with _computing(cluster_args):
        model, sample, arrays = _train(cluster_args, sdata, store, ["tissue"])
        names = _label_and_write(cluster_args, sdata, store, ["tissue"], arrays, model)
    metaclusters = np.asarray(sdata.labels["tissue_metaclusters"].values)
    ari = adjusted_rand_score(truth.ravel(), metaclusters.ravel())
    pictures = _save_pictures(out / "pictures", sdata, names, model, sample)
    sizes = np.bincount(metaclusters.ravel(), minlength=args.phenotypes + 1)[1:]
    print(
        f"Trained a {model.xdim}x{model.ydim} SOM on {model.n_samples_fit_} sampled pixels "
        f"({model.n_samples_fit_ / metaclusters.size:.1%}), {args.phenotypes} metaclusters; labelled "
        f"{metaclusters.size} pixels."
    )
    print("Metacluster sizes (pixels): " + ", ".join(f"{i + 1}: {n}" for i, n in enumerate(sizes)))
    print(f"Adjusted Rand index of the metaclusters against the known phenotypes: {ari:.3f}")
    print(f"SpatialData store (image 'tissue', labels 'tissue_som_clusters', 'tissue_metaclusters'): {store}")
    for path in pictures:
        print(f"Picture: {path}")
    print(f"Done in {time.perf_counter() - t0:.1f} s.")
    return 0


def _cluster(args) -> int:
    import joblib

    store = Path(args.store)
    sdata = _open_store(store)
    images = args.image
    if args.save_model is not None and not Path(args.save_model).parent.exists():
        raise _UsageError(f"--save-model: folder {str(Path(args.save_model).parent)!r} does not exist")
    t0 = time.perf_counter()
    with _computing(args):
        model, sample, arrays = _train(args, sdata, store, images)
        chosen = " (chosen from the data)" if model.n_clusters == "auto" else ""
        _say(
            f"Trained a {model.xdim}x{model.ydim} SOM ({model.som}) on {model.n_samples_fit_} sampled pixels of "
            f"{len(images)} image(s), {model.n_clusters_} metaclusters{chosen}, in {time.perf_counter() - t0:.1f} s."
        )
        names = _label_and_write(args, sdata, store, images, arrays, model)
    if args.save_model is not None:
        joblib.dump(model, args.save_model)
        print(f"Model: {args.save_model}")
    for path in _save_pictures(_pictures_folder(args, store), sdata, names, model, sample):
        print(f"Picture: {path}")
    return 0


def _apply(args) -> int:
    import joblib

    from . import PixelFlowSOM

    store = Path(args.store)
    if not Path(args.model).is_file():
        raise _UsageError(f"--model {args.model!r} does not exist")
    model = joblib.load(args.model)
    if not isinstance(model, PixelFlowSOM) or not hasattr(model, "codes_"):
        raise _UsageError(f"--model {args.model!r} is not a fitted PixelFlowSOM (save one with cluster --save-model)")
    sdata = _open_store(store)
    images = args.image
    arrays = _image_elements(sdata, images, store)
    _check_outputs(args, sdata, images)
    model.set_params(chunks=_spatial_chunks(args.chunks, arrays[0].ndim))
    with _computing(args):
        names = _label_and_write(args, sdata, store, images, arrays, model)
    for path in _save_pictures(_pictures_folder(args, store), sdata, names, model):
        print(f"Picture: {path}")
    return 0


def _pictures_folder(args, store: Path) -> Path:
    return Path(args.pictures) if args.pictures else store.parent / f"{store.stem}_pictures"


# ----------------------------------------------------------------------------- parser


def _add_common(parser, *, training):
    from . import PixelFlowSOM

    parser.add_argument("store", help="SpatialData zarr store (e.g. sample.zarr)")
    parser.add_argument(
        "--image", action="append", required=True, metavar="NAME", help="image element to label (repeat for several)"
    )
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
    parser.add_argument(
        "--chunks", help="chunks for labelling: 'auto', one int, or c,y,x sizes (c,z,y,x for 3D), e.g. 20,1024,1024"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing labels elements of those names")
    parser.add_argument(
        "--scheduler",
        default="threads",
        help="dask scheduler: threads (default), processes, or the ADDRESS of a dask.distributed scheduler",
    )
    parser.add_argument("--pictures", metavar="DIR", help="where to save the pictures (default: STORE_pictures/)")
    parser.add_argument(
        "--quiet", action="store_true", help="show no progress of the dask computations (shown on stderr otherwise)"
    )
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
        parser.add_argument("--save-model", metavar="FILE", help="save the fitted model (joblib), for `apply`")


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

    apply = sub.add_parser(
        "apply",
        help="label images of a store with a model saved by `cluster --save-model`",
        description="Label every pixel of the images with a saved model and write the labels elements into the store.",
    )
    _add_common(apply, training=False)
    apply.add_argument("--model", required=True, metavar="FILE", help="model saved by `cluster --save-model`")
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _UsageError as error:
        parser.exit(2, f"pixelflowsom {args.command}: error: {error}\n")
    except _USER_ERRORS as error:
        parser.exit(2, f"pixelflowsom {args.command}: error: {_message(error)}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
