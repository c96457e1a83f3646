"""harpy's own pixel-clustering benchmark workload, phase by phase, against one read pass of the same store.

The workload of the harpy paper's pixel-clustering benchmark: a 20 x 10000 x 10000 float32 image in a SpatialData
zarr store with 4096 x 4096 chunks (all channels in one chunk), generated as harpy's script generates it (one image
tiled to the full size with ``dask.array.tile``, rechunked, written with spatialdata); here the tile is a seeded
synthetic multiplexed image of 1000 x 1000 pixels (harpy tiles a downloaded example image, which this benchmark must
not download). The call, as harpy's benchmark makes it::

    pixelflowsom.harpy.im.flowsom(
        sdata,
        "image",
        "clusters",
        "metaclusters",
        fraction=0.1,
        n_clusters=20,
        xdim=10,
        ydim=10,
        chunks=512,
        random_state=112,
        persist_intermediate=False,
        overwrite=True,
    )

Each run is a child process of its own, on the store read back with ``spatialdata.read_zarr`` (so that its peak RSS,
``VmHWM``, is its own): first a read pass (the floor: ``image.data.sum(axis=0).compute()``, dask's threads), then the
drop-in, then the read pass again. The drop-in's phases are the records of the ``"pixelflowsom"`` logger
(:mod:`pixelflowsom._log`). Prints the read passes, every phase and the total in seconds and in read passes
(against the mean of the two), the peak RSS of every child, and checks the labels of the image's top-left 512 x 512
pixels against the float64 brute-force nearest node of the returned codes.

``--size 20000 --fraction 0.02`` runs the same workload on 32 GB of pixels (larger than this machine's 24 GB of RAM).
``--harpy`` also runs harpy's ``harpy.im.flowsom`` with the same call (hours at these sizes on 2 cores).

Run: ``python benchmarks/bench_paper.py`` (``--size 3000`` for a quick run; ``--dir D --keep`` keeps the store, and a
later run with the same ``--dir`` and shape reuses it).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _children import array_shape, run_child  # benchmarks/_children.py (scripts run from their folder)
from _memory import peak_rss_gb

STORE = "paper.zarr"
IMAGE = "image"
TILE = 1000


def write_store(folder: Path, size: int, n_channels: int, chunk: int) -> float:
    """Tile one synthetic image to ``(n_channels, size, size)``, rechunk it and write it; return the seconds."""
    import dask
    import dask.array as da
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from pixelflowsom._synthetic import make_synthetic_image

    t0 = time.perf_counter()
    tile, _ = make_synthetic_image((TILE, TILE), n_channels=n_channels, n_phenotypes=8, seed=0)
    repeats = -(-size // TILE)
    tiled = da.tile(da.from_array(tile.values, chunks=(n_channels, TILE, TILE)), (1, repeats, repeats))
    tiled = tiled[:, :size, :size].rechunk((n_channels, chunk, chunk))
    element = Image2DModel.parse(tiled, dims=("c", "y", "x"), c_coords=list(tile.c.values))
    with dask.config.set(scheduler="threads"):
        sd.SpatialData(images={IMAGE: element}).write(folder / STORE, overwrite=True)
    return time.perf_counter() - t0


def read_pass(folder: Path) -> dict:
    """The floor: read every pixel of the store once (dask's threads), as ``image.data.sum(axis=0)``."""
    import dask
    import spatialdata as sd

    sdata = sd.read_zarr(folder / STORE)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        sdata.images[IMAGE].data.sum(axis=0).compute()
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": peak_rss_gb()}


class _Phases(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.seconds = {}

    def emit(self, record):
        if hasattr(record, "phase"):
            self.seconds[record.phase] = self.seconds.get(record.phase, 0.0) + record.seconds


def drop_in(folder: Path, fraction: float, n_clusters: int, impl: str) -> dict:
    """harpy's benchmark call with pixelflowsom's drop-in (or harpy's own ``harpy.im.flowsom``)."""
    import spatialdata as sd

    if impl == "harpy":
        import harpy as hp
    else:
        import pixelflowsom.harpy as hp

    phases = _Phases()
    logger = logging.getLogger("pixelflowsom")
    logger.addHandler(phases)
    logger.setLevel(logging.INFO)
    sdata = sd.read_zarr(folder / STORE)
    t0 = time.perf_counter()
    sdata, fsom, mapping = hp.im.flowsom(
        sdata,
        IMAGE,
        "clusters",
        "metaclusters",
        fraction=fraction,
        n_clusters=n_clusters,
        xdim=10,
        ydim=10,
        chunks=512,
        random_state=112,
        persist_intermediate=False,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    peak = peak_rss_gb()
    # The labels of a corner against the float64 brute-force nearest node of the returned codes.
    from scipy.spatial.distance import cdist

    corner = np.asarray(sdata.images[IMAGE].data[:, :512, :512], dtype=np.float64).reshape(-1, 512 * 512).T
    codes = np.asarray(fsom.model.codes, dtype=np.float64)
    expected = cdist(corner, codes, "sqeuclidean").argmin(axis=1) + 1
    clusters = np.asarray(sdata.labels["clusters"].data[:512, :512]).ravel()
    metaclusters = np.asarray(sdata.labels["metaclusters"].data[:512, :512]).ravel()
    return {
        "seconds": seconds,
        "phases": phases.seconds,
        "peak_rss_gb": peak,
        "n_samples": int(fsom.get_cell_data().n_obs),
        "corner_som_nodes_right": float(np.mean(clusters == expected)),
        "corner_metaclusters_right": float(np.mean(metaclusters == mapping.to_numpy()[expected - 1])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=4096, help="zarr chunk size (y and x; all channels in one)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--n-clusters", type=int, default=20)
    parser.add_argument("--harpy", action="store_true", help="also run harpy.im.flowsom (very slow)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (and reuse it in a later run)")
    parser.add_argument("--child", choices=("read", "pixelflowsom", "harpy"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        if args.child == "read":
            result = read_pass(args.dir)
        else:
            result = drop_in(args.dir, args.fraction, args.n_clusters, args.child)
        print(json.dumps(result))
        return
    reuse = args.dir is not None and array_shape(args.dir / STORE / "images" / IMAGE / "s0") == (
        args.channels,
        args.size,
        args.size,
    )
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="pixelflowsom-paper-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        gb = args.channels * args.size**2 * 4 / 1e9
        shape = f"{args.channels} x {args.size} x {args.size} float32 ({gb:.1f} GB), chunks {args.chunk}^2"
        if reuse:
            print(f"reusing the {shape} image in {args.dir / STORE}", flush=True)
        else:
            print(f"writing {shape} to {args.dir / STORE} ...", flush=True)
            print(f"  written in {write_store(args.dir, args.size, args.channels, args.chunk):.0f} s", flush=True)
        runs = {
            "read pass 1": run_child(__file__, "read", args),
            "pixelflowsom": run_child(__file__, "pixelflowsom", args),
        }
        runs["read pass 2"] = run_child(__file__, "read", args)
        if args.harpy:
            runs["harpy"] = run_child(__file__, "harpy", args)
        floor = (runs["read pass 1"]["seconds"] + runs["read pass 2"]["seconds"]) / 2
        ours = runs["pixelflowsom"]
        print(
            f"\nharpy's workload: fraction {args.fraction} ({ours['n_samples']} training pixels), 10 x 10 SOM, "
            f"n_clusters={args.n_clusters}, chunks=512, random_state=112"
        )
        print(f"{'':48s} {'seconds':>8s} {'read passes':>12s} {'peak RSS':>9s}")
        for name in ("read pass 1", "read pass 2"):
            r = runs[name]
            print(f"{name:48s} {r['seconds']:8.1f} {r['seconds'] / floor:12.2f} {r['peak_rss_gb']:7.2f} GB")
        print(
            f"{'pixelflowsom.harpy.im.flowsom':48s} {ours['seconds']:8.1f} {ours['seconds'] / floor:12.2f} "
            f"{ours['peak_rss_gb']:7.2f} GB"
        )
        for name, seconds in ours["phases"].items():
            print(f"  {name:46s} {seconds:8.1f} {seconds / floor:12.2f}")
        if "harpy" in runs:
            r = runs["harpy"]
            ratio = r["seconds"] / floor
            print(f"{'harpy.im.flowsom':48s} {r['seconds']:8.1f} {ratio:12.2f} {r['peak_rss_gb']:7.2f} GB")
            print(f"speed-up over harpy: {r['seconds'] / ours['seconds']:.1f}x")
        print(
            f"labels of the top-left 512 x 512 pixels equal to the float64 nearest node of the returned codes: "
            f"{100 * ours['corner_som_nodes_right']:.2f}% (SOM nodes), {100 * ours['corner_metaclusters_right']:.2f}% "
            "(metaclusters)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
