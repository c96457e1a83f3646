"""The ``pixelflowsom`` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from ._estimator import PixelFlowSOM
    from ._synthetic import make_synthetic_image

    t0 = time.perf_counter()
    image, truth = make_synthetic_image(
        (args.size, args.size), n_channels=args.channels, n_phenotypes=args.phenotypes, seed=args.seed
    )
    n_channels, height, width = image.shape
    print(
        f"Synthetic multiplexed image: {n_channels} channels x {height} x {width} pixels, "
        f"{args.phenotypes} known phenotypes (seed {args.seed})."
    )
    pixels = np.asarray(image).reshape(n_channels, -1).T
    model = PixelFlowSOM(
        n_clusters=args.phenotypes, xdim=10, ydim=10, fraction=args.fraction, random_state=args.seed
    ).fit(pixels)
    t_fit = time.perf_counter() - t0
    labels = model.predict(pixels)
    t_all = time.perf_counter() - t0
    ari = adjusted_rand_score(truth.ravel(), labels)
    sizes = np.bincount(labels, minlength=args.phenotypes)
    print(
        f"Trained a {model.xdim}x{model.ydim} SOM on {model.n_samples_fit_} sampled pixels "
        f"(fraction {args.fraction}), {args.phenotypes} metaclusters; labelled {labels.size} pixels."
    )
    print("Metacluster sizes (pixels): " + ", ".join(f"{i}: {n}" for i, n in enumerate(sizes)))
    print(f"Adjusted Rand index against the known phenotypes: {ari:.3f}")
    print(f"Time: fit {t_fit:.2f} s, total {t_all:.2f} s.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``pixelflowsom`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pixelflowsom",
        description="Fast FlowSOM pixel clustering of multiplexed tissue images.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="cluster a synthetic multiplexed image with known phenotypes (needs no data)",
        description="Generate a seeded synthetic multiplexed image in memory, fit PixelFlowSOM on a fraction of its "
        "pixels, label every pixel and report how well the metaclusters recover the known phenotypes.",
    )
    demo.add_argument("--size", type=int, default=512, help="image height and width in pixels (default: 512)")
    demo.add_argument("--channels", type=int, default=12, help="number of channels (default: 12)")
    demo.add_argument(
        "--phenotypes", type=int, default=6, help="number of phenotypes, background included (default: 6)"
    )
    demo.add_argument("--fraction", type=float, default=0.1, help="fraction of pixels to train on (default: 0.1)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    """Run the ``pixelflowsom`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and not 0 < args.fraction <= 1:
        parser.error(f"--fraction {args.fraction} must be in (0, 1]")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
