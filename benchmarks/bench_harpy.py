"""pixelflowsom.harpy.im.flowsom against harpy.im.flowsom (harpy-analysis 0.4), side by side on the same image.

For each size, writes one seeded synthetic multiplexed image with known phenotypes to a .npy file, then runs each
implementation in its own child process (so that each peak RSS is its own) with the same call:
``im.flowsom(sdata, "img", "clusters", "metaclusters", fraction=0.1, n_clusters=8, xdim=10, ydim=10,
random_state=0)`` on an in-memory SpatialData holding the image (chunks of 1024 x 1024, all channels). The timed
part is the call plus reading the metacluster labels into memory.

Prints, per size: wall time, peak RSS (whole process: imports and the image included, the same for both) and the
peak RSS added by the call, the time and memory ratios (harpy / ours), and the adjusted Rand index of each
metacluster map against the true phenotypes.

Needs the benchmark extra: ``pip install -e ".[benchmark]"``. Run: ``python benchmarks/bench_harpy.py``
(``--sizes 2048 4096`` by default; ``--sizes 512`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import peak_rss_gb  # benchmarks/_memory.py (scripts run from their folder)

#: harpy, then the drop-in with its default SOM (FlowSOM's online SOM), the hybrid SOM and the batch SOM.
IMPLEMENTATIONS = ("harpy", "pixelflowsom", "pixelflowsom-hybrid", "pixelflowsom-batch")


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1024**3


def child(impl: str, data: Path, n_clusters: int, fraction: float) -> dict:
    import spatialdata as sd
    from sklearn.metrics import adjusted_rand_score
    from spatialdata.models import Image2DModel

    options = {}
    if impl == "harpy":
        import harpy as hp
    else:
        import pixelflowsom.harpy as hp

        if impl != "pixelflowsom":  # the drop-in's default SOM (online), else pixelflowsom-hybrid / -batch
            options["som"] = impl.split("-")[1]

    image = np.load(data / "image.npy")
    truth = np.load(data / "truth.npy")
    channels = [f"marker_{i:02d}" for i in range(image.shape[0])]
    element = Image2DModel.parse(
        image, dims=("c", "y", "x"), c_coords=channels, chunks={"c": image.shape[0], "y": 1024, "x": 1024}
    )
    sdata = sd.SpatialData(images={"img": element})
    del image
    rss_before = current_rss_gb()
    t0 = time.perf_counter()
    sdata, fsom, mapping = hp.im.flowsom(
        sdata,
        "img",
        "clusters",
        "metaclusters",
        fraction=fraction,
        n_clusters=n_clusters,
        xdim=10,
        ydim=10,
        random_state=0,
        **options,
    )
    metaclusters = np.asarray(sdata.labels["metaclusters"].values)
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()
    labelled = metaclusters > 0
    return {
        "seconds": seconds,
        "peak_rss_gb": peak,
        "call_rss_gb": peak - rss_before,
        "ari": adjusted_rand_score(truth[labelled], metaclusters[labelled]),
        "n_sampled": int(fsom.get_cell_data().n_obs),
        "dtype": str(metaclusters.dtype),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        impl, data = args.child
        print(json.dumps(child(impl, Path(data), args.n_clusters, args.fraction)))
        return

    from pixelflowsom._synthetic import make_synthetic_image

    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="pixelflowsom-bench-") as tmp:
            data = Path(tmp)
            image, truth = make_synthetic_image(
                (size, size), n_channels=args.channels, n_phenotypes=args.n_clusters, seed=0
            )
            np.save(data / "image.npy", image.values)
            np.save(data / "truth.npy", truth.astype(np.uint8))
            del image, truth
            results = {}
            for impl in IMPLEMENTATIONS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        impl,
                        str(data),
                        "--n-clusters",
                        str(args.n_clusters),
                        "--fraction",
                        str(args.fraction),
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"{impl} failed:\n{out.stderr[-3000:]}")
                results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        h = results["harpy"]
        print(
            f"{args.channels} channels x {size} x {size} float32, fraction {args.fraction}, 10x10 SOM, "
            f"{args.n_clusters} metaclusters"
        )
        for name, r in results.items():
            print(
                f"  {name:20s} {r['seconds']:7.1f} s   peak RSS {r['peak_rss_gb']:5.2f} GB "
                f"(+{r['call_rss_gb']:.2f} GB in the call)   ARI {r['ari']:.3f}   "
                f"{r['n_sampled']} sampled pixels, labels {r['dtype']}"
            )
        for name in IMPLEMENTATIONS[1:]:
            p = results[name]
            print(
                f"  {name} / harpy: speed-up x{h['seconds'] / p['seconds']:.1f}   peak RSS ratio "
                f"{p['peak_rss_gb'] / h['peak_rss_gb']:.2f}   call RSS ratio {p['call_rss_gb'] / h['call_rss_gb']:.2f}"
                f"   ARI {p['ari']:.3f} vs harpy {h['ari']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
