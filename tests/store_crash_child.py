"""Kill ``write_label_stacks`` or ``relabel_metaclusters`` at chosen steps of its store work (run by test_store.py).

Usage: ``python store_crash_child.py config.json [config.json ...]``. Each config names a pristine store, a work
folder, an ``.npz`` with the new label stacks, the image and output names, and ``mode`` (``"exchange"``, or
``"fallback"``: atomic exchange made unavailable, so swaps take two renames), or ``mode`` ``"relabel"`` with the
``node_names``, ``metacluster_names`` and ``mapping`` of a ``relabel_metaclusters`` call (swaps by exchange).

Every filesystem mutation of the call (``os.mkdir`` of a missing folder, ``os.replace``, ``os.rename``, ``os.link``,
``os.unlink``, ``os.rmdir``, the atomic exchange) is an event, ``"visible"`` if it touches the store outside the
staging folder, else ``"inside"``. The visible events come one after the other from the calling thread, so their
order is the same in every run; the inside ones (chunk writes in dask's threads) vary a little with thread timing.
``os._exit(1)`` before the ``j``-th event of a category kills the call there.

This process imports everything once and starts no thread; each run is a forked child on its own copy of the pristine
store. A first child counts the events; then one child per crash point runs on ``work/<category>-<j>.zarr``: before
every visible event (or, if the config lists ``kinds``, the first ``max_points`` visible events of these kinds), before
the first, middle
and last inside events (without ``kinds``), and one never killed (``work/complete.zarr``), ``parallel`` children at
a time. The exit codes go to ``work/result.json``:
1 killed, 0 completed (also a crash point past the last event of that run), 3 failed otherwise.
"""

import json
import os
import shutil
import sys
import threading
import traceback
from pathlib import Path

import dask.array as da
import numpy as np
import spatialdata as sd
import xarray as xr

from pixelflowsom import _store

STAGING = _store.STAGING_PREFIX


def _install(crash_at, events):
    """Wrap the filesystem mutations: record each one as ``(category, kind, paths)``; exit before ``crash_at``."""
    lock = threading.Lock()
    counts = {"visible": 0, "inside": 0}
    removing = threading.local()  # the folder shutil.rmtree is removing: its calls name files relative to it

    def hook(kind, original, n_paths):
        def wrapped(*args, **kwargs):
            paths = [os.fsdecode(p) for p in args[:n_paths]]
            if "dir_fd" in kwargs and getattr(removing, "root", None):
                paths = [os.path.join(removing.root, p) for p in paths]
            if kind == "mkdir" and os.path.isdir(paths[0]):
                return original(*args, **kwargs)  # raises FileExistsError: no mutation, no event
            category = "inside" if all(STAGING in p for p in paths) else "visible"
            with lock:
                if [category, counts[category]] == crash_at:
                    os._exit(1)
                counts[category] += 1
                events.append((category, kind, paths))
            return original(*args, **kwargs)

        return wrapped

    for name, n_paths in (("mkdir", 1), ("replace", 2), ("rename", 2), ("link", 2), ("unlink", 1), ("rmdir", 1)):
        setattr(os, name, hook(name, getattr(os, name), n_paths))
    rmtree = shutil.rmtree

    def rmtree_hooked(path, *args, **kwargs):
        removing.root = os.fspath(path)
        try:
            return rmtree(path, *args, **kwargs)
        finally:
            removing.root = None

    shutil.rmtree = rmtree_hooked
    exchange_call = _store._exchange_call

    def exchange_call_hooked():
        call = exchange_call()
        return None if call is None else hook("exchange", call, 2)

    _store._exchange_call = exchange_call_hooked


def _run(config, store, crash_at, events_file=None):
    if config["mode"] == "fallback":
        _store._exchange_call = lambda: None
    sdata = sd.read_zarr(store)
    events = []
    if config["mode"] == "relabel":
        mapping = np.asarray(config["mapping"])
        _install(crash_at, events)
        _store.relabel_metaclusters(sdata, config["node_names"], config["metacluster_names"], mapping)
    else:
        values = np.load(config["values"])
        stacks = [
            xr.DataArray(da.from_array(values[name], chunks=(2, *config["chunks"])), dims=("label", "y", "x"))
            for name in config["images"]
        ]
        _install(crash_at, events)
        _store.write_label_stacks(sdata, config["images"], stacks, config["names"])
    if events_file is not None:
        Path(events_file).write_text(json.dumps(events))


def _fork(target, *args, wait=True) -> int:
    """Run ``target(*args)`` in a forked child; return its exit code (``wait``) or its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            target(*args)
        except BaseException:  # noqa: BLE001 - report anything, then leave without running the parent's cleanup
            traceback.print_exc()
            os._exit(3)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) if wait else pid


def _warm_up():
    """Do, once in this process, the lazy imports and registrations every run needs; start no thread (fork)."""
    import dask
    import dask.graph_manipulation
    import distributed  # noqa: F401 - dask looks for a client
    import numcodecs
    import ome_zarr.reader
    import ome_zarr.writer  # noqa: F401
    import skimage.transform  # noqa: F401
    import spatialdata._io.io_raster  # noqa: F401
    from zarr.registry import _collect_entrypoints

    _collect_entrypoints()
    numcodecs.registry.get_codec({"id": "zstd"})
    numcodecs.registry.get_codec({"id": "blosc"})  # the codec of relabelled elements
    dask.base.tokenize(np.zeros(3))
    dask.base.tokenize(da.zeros(3))
    xr.backends.list_engines()
    assert threading.active_count() == 1


def main(config_file):
    config = json.loads(Path(config_file).read_text())
    work = Path(config["work"])
    shutil.copytree(config["pristine"], work / "count.zarr")
    if _fork(_run, config, str(work / "count.zarr"), None, str(work / "events.json")) != 0:
        sys.exit("the counting run failed")
    events = json.loads((work / "events.json").read_text())
    visible = [kind for category, kind, _ in events if category == "visible"]
    n_inside = len(events) - len(visible)
    kinds = config.get("kinds")  # None: every kind of event
    points = [["visible", j] for j, kind in enumerate(visible) if kinds is None or kind in kinds]
    points = points[: config.get("max_points")]
    if kinds is None:
        points += [["inside", j] for j in (0, n_inside // 2, n_inside - 1)]
    points.append(None)
    result, running = {}, {}
    for point in [*points, "end"]:
        if point != "end":
            name = "complete" if point is None else f"{point[0]}-{point[1]}"
            shutil.copytree(config["pristine"], work / f"{name}.zarr")
            running[_fork(_run, config, str(work / f"{name}.zarr"), point, wait=False)] = name
        while running and (point == "end" or len(running) >= config["parallel"]):
            pid, status = os.wait()
            result[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    (work / "result.json").write_text(json.dumps({"codes": result, "events": events}))


if __name__ == "__main__":
    _warm_up()
    for config_file in sys.argv[1:]:
        main(config_file)
