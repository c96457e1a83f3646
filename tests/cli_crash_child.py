"""Kill ``pixelflowsom cluster --overwrite`` before every store change it makes (run by tests/test_cli.py).

Usage: ``python cli_crash_child.py PRISTINE WORK ARGS...``: ``ARGS`` are the command's arguments after the store. The
command runs once, in a subprocess, on a copy (so that numba's cache is on disk and the children, which only read it,
all see the same sequence of filesystem changes); this process then imports everything without starting a thread
(``store_crash_child._warm_up``). A first forked child counts the changes (the hooks of ``store_crash_child.py``);
then one forked child per change outside the staging folder runs the command on its own copy of ``PRISTINE``, with
dask's synchronous scheduler, and is killed (``os._exit``) right before that change, and one runs to completion.
Exit codes go to ``WORK/result.json``.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import store_crash_child as hooks  # the filesystem hooks and the forking of the store kill test


def run(store, argv, crash_at, events_file=None):
    from pixelflowsom._cli import main

    events = []
    hooks._install(crash_at, events)
    code = main(["cluster", store, *argv, "--scheduler", "synchronous", "--quiet"])
    if events_file is not None:
        Path(events_file).write_text(json.dumps(events))
    if code != 0:
        raise RuntimeError(f"exit code {code}")


def main(pristine, work, argv):
    work = Path(work)
    shutil.copytree(pristine, work / "warm.zarr")
    command = [sys.executable, "-m", "pixelflowsom", "cluster", str(work / "warm.zarr"), *argv]
    subprocess.run([*command, "--scheduler", "synchronous", "--quiet"], check=True, capture_output=True)
    hooks._warm_up()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # the pictures

    import pixelflowsom._cli  # noqa: F401

    shutil.copytree(pristine, work / "count.zarr")
    if hooks._fork(run, str(work / "count.zarr"), argv, None, str(work / "events.json")) != 0:
        sys.exit("the counting run failed")
    events = json.loads((work / "events.json").read_text())
    n_visible = sum(category == "visible" for category, _, _ in events)
    result = {}
    for point in [*(["visible", j] for j in range(n_visible)), None]:
        name = "complete" if point is None else f"visible-{point[1]}"
        shutil.copytree(pristine, work / f"{name}.zarr")
        result[name] = hooks._fork(run, str(work / f"{name}.zarr"), argv, point)
    (work / "result.json").write_text(json.dumps({"codes": result, "events": events}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
