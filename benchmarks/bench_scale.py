"""Out-of-core benchmark: cluster an image larger than RAM from zarr and write its label images back to zarr.

1. Writes a seeded synthetic multiplexed image (default 40 channels x 8192 x 8192 float32, 10.7 GB) as the image
   element ``"img"`` of a SpatialData zarr store, one tile at a time (never whole in memory; zarr chunks of one
   channel x ``--tile`` x ``--tile``).
2. In a child process (so that its peak RSS is its own): opens the image array lazily with dask, fits
   ``PixelFlowSOM(fraction=0.02)`` on it, computes both label images (SOM node and metacluster) and writes them to
   zarr in one pass over the image.
3. In another child process: the drop-in ``pixelflowsom.harpy.im.flowsom`` on the store read back with
   ``spatialdata.read_zarr`` (zarr-backed), same fraction, number of metaclusters and seed. It also builds the
   ``flowsom.FlowSOM`` object of the sample and writes both labels elements into the store.
4. Prints, for both, wall time and peak RSS (``VmHWM``; target: under 2 GB for both).
5. With ``--relabel`` (or ``--only relabel``, on a kept store the drop-in has labelled): in another child process,
   times one read pass of the SOM-node labels element ``"clusters"`` (every chunk read from the store, decompressed
   and dropped) and ``pixelflowsom._store.relabel_metaclusters`` of ``"metaclusters"`` from it with a permuted
   node -> metacluster mapping, then back to the original mapping (so the store ends as it was), ``--repeat`` times
   each; prints the times, their ratio (target: relabel <= 1.5 x read) and the child's peak RSS (target <= 1 GB).
   The original mapping is read from the pixels (outside the timings), which also checks that every pixel's
   metacluster is the mapping applied to its node, before and after.

Run: ``python benchmarks/bench_scale.py`` (``--size 2048`` for a quick run; ``--keep`` keeps the store, which a
later run with the same ``--dir``, size and channels reuses instead of writing it again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _children import array_shape, run_child  # benchmarks/_children.py (scripts run from their folder)
from _memory import peak_rss_gb

STORE = "image.sdata.zarr"
IMAGE = "img"


def _image_array(path: Path) -> Path:
    """The zarr array of the image element (single scale) inside the SpatialData store."""
    return path / STORE / "images" / IMAGE / "s0"


def _tile(n_channels: int, tile: int, n_tiles: int, seed: int, block_info=None) -> np.ndarray:
    """Block function: the synthetic ``(c, tile, tile)`` tile at the block's position (its own tissue layout)."""
    from pixelflowsom._synthetic import make_synthetic_image

    _, i, j = block_info[None]["chunk-location"]
    # Same phenotype profiles everywhere (same profile seed), a different tissue layout per tile.
    image, _ = make_synthetic_image(
        (tile, tile), n_channels=n_channels, n_phenotypes=8, seed=seed, layout_seed=seed + 1 + i * n_tiles + j
    )
    return image.values


def write_image(path: Path, size: int, n_channels: int, tile: int, seed: int) -> float:
    """Write the image element to a new SpatialData store under ``path``; return the seconds it took."""
    import dask
    import dask.array as da
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    n_tiles = size // tile
    tiles = da.map_blocks(
        _tile,
        n_channels,
        tile,
        n_tiles,
        seed,
        chunks=((n_channels,), (tile,) * n_tiles, (tile,) * n_tiles),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
    element = Image2DModel.parse(
        tiles.rechunk((1, tile, tile)), dims=("c", "y", "x"), c_coords=[f"marker_{i:02d}" for i in range(n_channels)]
    )
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        sd.SpatialData(images={IMAGE: element}).write(path / STORE, overwrite=True)
    return time.perf_counter() - t0


def cluster(path: Path, fraction: float, n_clusters: int) -> dict:
    """PixelFlowSOM alone: fit on the zarr image, label it and write both label images to zarr."""
    import dask
    import dask.array as da
    import xarray as xr
    import zarr

    from pixelflowsom import PixelFlowSOM

    dask.config.set(scheduler="threads")
    data = da.from_zarr(str(_image_array(path)))
    image = xr.DataArray(data, dims=("c", "y", "x"), coords={"c": [f"marker_{i:02d}" for i in range(data.shape[0])]})
    t0 = time.perf_counter()
    model = PixelFlowSOM(n_clusters=n_clusters, fraction=fraction, random_state=0).fit(image)
    t_fit = time.perf_counter() - t0
    labels = model.transform(image)  # lazy (2, y, x): [som_node, metacluster]
    targets = [
        zarr.create_array(
            store=str(path / f"{name}.zarr"),
            shape=labels.shape[1:],
            chunks=labels.data.chunksize[1:],
            dtype=labels.dtype,
            overwrite=True,
        )
        for name in ("som_nodes", "metaclusters")
    ]
    t1 = time.perf_counter()
    da.store([labels.data[0], labels.data[1]], targets, lock=False)
    t_label = time.perf_counter() - t1
    check = zarr.open_array(str(path / "metaclusters.zarr"))[:256, :256]
    return {
        "seconds": t_fit + t_label,
        "fit_s": t_fit,
        "label_and_write_s": t_label,
        "n_samples_fit": model.n_samples_fit_,
        "label_dtype": str(labels.dtype),
        "metaclusters_in_corner": sorted(int(v) for v in np.unique(check)),
        "peak_rss_gb": peak_rss_gb(),
    }


def drop_in(path: Path, fraction: float, n_clusters: int) -> dict:
    """The harpy drop-in on the zarr-backed SpatialData: sample, train, FlowSOM object, both labels elements."""
    import spatialdata as sd

    import pixelflowsom.harpy as hp

    sdata = sd.read_zarr(path / STORE)
    t0 = time.perf_counter()
    sdata, fsom, _ = hp.im.flowsom(
        sdata,
        IMAGE,
        "clusters",
        "metaclusters",
        fraction=fraction,
        n_clusters=n_clusters,
        random_state=0,
        overwrite=True,
    )
    seconds = time.perf_counter() - t0
    check = np.asarray(sdata.labels["metaclusters"].data[:256, :256])
    return {
        "seconds": seconds,
        "n_samples_fit": fsom.get_cell_data().n_obs,
        "label_dtype": str(sdata.labels["metaclusters"].dtype),
        "metaclusters_in_corner": sorted(int(v) for v in np.unique(check)),
        "peak_rss_gb": peak_rss_gb(),
    }


class _Discard:
    """A ``da.store`` target that drops what it gets: the read pass reads, decompresses and keeps nothing."""

    def __setitem__(self, key, value):
        pass


def _pixel_mapping(nodes, metaclusters) -> np.ndarray:
    """The node -> metacluster mapping the pixels show (one pass); raise if a node has pixels in two metaclusters.

    Nodes without pixels get metacluster 1; the result is the mapping up to them, which the pixels cannot tell.
    """
    import dask.array as da

    base = 1 << (8 * metaclusters.dtype.itemsize)  # a bin per (node, metacluster): few for uint8 metaclusters
    pairs = nodes.astype(np.int64) * base + metaclusters.astype(np.int64)
    counts = da.bincount(pairs.ravel()).compute()
    present = np.flatnonzero(counts)
    node, meta = present // base, present % base
    if len(np.unique(node)) != len(node) or np.any((node == 0) != (meta == 0)):
        raise RuntimeError("the store's metacluster labels are no lookup of its SOM-node labels")
    mapping = np.ones(int(node.max()), dtype=np.int64)  # a node without pixels: any metacluster
    mapping[node[node > 0] - 1] = meta[node > 0]
    return mapping


def relabel(path: Path, repeat: int) -> dict:
    """One read pass of the SOM-node labels vs relabel_metaclusters from them (permuted mapping, then back)."""
    import dask
    import dask.array as da
    import spatialdata as sd

    from pixelflowsom._store import relabel_metaclusters

    dask.config.set(scheduler="threads")
    sdata = sd.read_zarr(path / STORE)
    if not {"clusters", "metaclusters"} <= set(sdata.labels):
        raise SystemExit(f"{path / STORE} has no labels 'clusters' and 'metaclusters': run the drop-in first")
    nodes = sdata.labels["clusters"]
    original = _pixel_mapping(nodes.data, sdata.labels["metaclusters"].data)
    n_meta = int(original.max())
    used = np.flatnonzero(np.bincount(original, minlength=n_meta + 1)[1:]) + 1
    permutation = np.arange(n_meta + 1)
    permutation[used] = np.random.default_rng(0).permutation(used)
    permuted = permutation[original]
    read_s, relabel_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        da.store(nodes.data, _Discard(), lock=False)
        read_s.append(time.perf_counter() - t0)
        for mapping in (permuted, original):
            t0 = time.perf_counter()
            relabel_metaclusters(sdata, ["clusters"], ["metaclusters"], mapping)
            relabel_s.append(time.perf_counter() - t0)
            if mapping is permuted and len(relabel_s) == 1:
                window = (slice(0, 1024), slice(0, 1024))
                got = np.asarray(sdata.labels["metaclusters"].data[window])
                expected = np.concatenate([[0], permuted])[np.asarray(nodes.data[window])]
                if not np.array_equal(got, expected):
                    raise RuntimeError("the relabelled metaclusters are not the permuted mapping of the nodes")
    if not np.array_equal(_pixel_mapping(nodes.data, sdata.labels["metaclusters"].data), original):
        raise RuntimeError("relabelling back did not restore the original metacluster labels")
    return {
        "shape": list(nodes.shape),
        "chunks": list(nodes.data.chunksize),
        "n_chunks": nodes.data.npartitions,
        "dtype": str(nodes.dtype),
        "n_nodes": len(original),
        "n_metaclusters": n_meta,
        "read_s": read_s,
        "relabel_s": relabel_s,
        "peak_rss_gb": peak_rss_gb(),
    }


def _relabel_child(args) -> dict:
    """Run the relabel child (as _children.run_child does, with ``--repeat``); return its JSON."""
    command = [sys.executable, __file__, "--child", "relabel", "--dir", str(args.dir), "--repeat", str(args.repeat)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"the relabel child failed:\n{child.stderr[-4000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--channels", type=int, default=40)
    parser.add_argument("--tile", type=int, default=1024, help="zarr chunk size (y and x); channels are chunked by 1")
    parser.add_argument("--fraction", type=float, default=0.02)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the store (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the store (and reuse it in a later run)")
    parser.add_argument(
        "--only", choices=("pixelflowsom", "drop-in", "relabel"), default=None, help="run only one of the children"
    )
    parser.add_argument("--relabel", action="store_true", help="also time relabel_metaclusters vs one read pass")
    parser.add_argument("--repeat", type=int, default=3, help="timings of the relabel child (each: read, 2 relabels)")
    parser.add_argument("--child", choices=("pixelflowsom", "drop-in", "relabel"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "relabel":
        print(json.dumps(relabel(args.dir, args.repeat)))
        return
    if args.child is not None:
        run = cluster if args.child == "pixelflowsom" else drop_in
        print(json.dumps(run(args.dir, args.fraction, args.n_clusters)))
        return
    reuse = args.dir is not None and array_shape(_image_array(args.dir)) == (args.channels, args.size, args.size)
    if args.only == "relabel" and not reuse:
        parser.error("--only relabel needs a kept store (--dir, same --size and --channels) that the drop-in labelled")
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="pixelflowsom-scale-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        gb = args.channels * args.size**2 * 4 / 1e9
        image = f"{args.channels} x {args.size} x {args.size} float32 ({gb:.1f} GB)"
        if reuse:
            print(f"reusing the {image} image in {args.dir / STORE}", flush=True)
        else:
            print(f"writing {image} to {args.dir / STORE} ...", flush=True)
            t_write = write_image(args.dir, args.size, args.channels, args.tile, seed=0)
            print(f"  written in {t_write:.0f} s", flush=True)
        results = {}
        for mode in ("pixelflowsom", "drop-in"):
            if args.only in (None, mode):
                results[mode] = run_child(__file__, mode, args)
        if "pixelflowsom" in results:
            r = results["pixelflowsom"]
            print(
                f"PixelFlowSOM: fit (fraction {args.fraction}, {r['n_samples_fit']} pixels) {r['fit_s']:.1f} s, "
                f"label both images and write them to zarr ({r['label_dtype']}) {r['label_and_write_s']:.1f} s"
            )
        if results:
            print(f"{'':40s} {'seconds':>8s} {'child wall':>10s} {'peak RSS':>9s}   metaclusters in the top-left 256^2")
        names = {"pixelflowsom": "PixelFlowSOM fit + label + write", "drop-in": "drop-in pixelflowsom.harpy.im.flowsom"}
        for mode, r in results.items():
            print(
                f"{names[mode]:40s} {r['seconds']:8.1f} {r['wall_s']:10.1f} {r['peak_rss_gb']:7.2f} GB   "
                f"{r['metaclusters_in_corner']}"
            )
        if results:
            print(f"(peak RSS: VmHWM of each child process, imports included; target < 2 GB; image {gb:.1f} GB)")
        if args.relabel or args.only == "relabel":
            r = _relabel_child(args)
            read, relab = np.array(r["read_s"]), np.array(r["relabel_s"])
            print(
                f"relabel_metaclusters of one {r['shape'][0]} x {r['shape'][1]} {r['dtype']} element ({r['n_chunks']} "
                f"chunks of {r['chunks'][0]} x {r['chunks'][1]}, {r['n_nodes']} nodes -> {r['n_metaclusters']} "
                "metaclusters):"
            )
            print(f"  read pass of the node labels  min {read.min():.3f} s  median {np.median(read):.3f} s  {read}")
            print(f"  relabel_metaclusters          min {relab.min():.3f} s  median {np.median(relab):.3f} s  {relab}")
            print(
                f"  ratio (relabel / read): min/min {relab.min() / read.min():.2f}, median/median "
                f"{np.median(relab) / np.median(read):.2f} (target <= 1.5); child peak RSS {r['peak_rss_gb']:.2f} GB "
                "(target <= 1 GB)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
