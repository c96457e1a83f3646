"""The command line, as a new user runs it: demo, cluster, apply, and every error path (exit code 2, one line)."""

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel

from pixelflowsom._cli import main
from pixelflowsom._synthetic import make_synthetic_image

from .conftest import image_reference


def write_store(path, seeds=(0,), channels=6, size=80, order=None, nan=True):
    """A store of synthetic images ``img0``, ...; ``order`` stores their channels in another order.

    ``nan``: six background pixels of every image are NaN.
    """
    images = {}
    for i, seed in enumerate(seeds):
        image, _ = make_synthetic_image((size, size), n_channels=channels, n_phenotypes=4, seed=seed)
        image = image.copy()
        if nan:
            image.values[:, :2, :3] = np.nan  # background pixels
        if order is not None:
            image = image.isel(c=order)
        images[f"img{i}"] = Image2DModel.parse(
            image.values, dims=("c", "y", "x"), c_coords=list(image.c.values), chunks={"c": channels, "y": 40, "x": 40}
        )
    sd.SpatialData(images=images).write(path)
    return path


def assert_labels_right(store, image, clusters, metaclusters, model):
    """The written labels equal the float64 nearest node of the saved model's codes on image.sel(c=channels)."""
    sdata = sd.read_zarr(store)
    expected = image_reference(sdata.images[image], model.codes_, model.node_metacluster_, model.channels_)
    np.testing.assert_array_equal(sdata.labels[clusters].values, expected[0])
    np.testing.assert_array_equal(sdata.labels[metaclusters].values, expected[1])


def snapshot(path):
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in Path(path).rglob("*")}


@pytest.fixture
def store(tmp_path):
    return write_store(tmp_path / "sample.zarr", seeds=(0, 1))


def test_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "96", "--channels", "6", "--phenotypes", "4"]) == 0
    text = capsys.readouterr().out
    assert "6 channels x 96 x 96 pixels, 4 known phenotypes" in text
    ari = float(text.split("against the known phenotypes: ")[1].split()[0])
    assert ari > 0.9
    store = out / "demo.zarr"
    assert str(store) in text
    labels = sd.read_zarr(store).labels
    assert set(labels) == {"tissue_som_clusters", "tissue_metaclusters"}
    for name in ("tissue_metaclusters.png", "phenotype_heatmap.png", "som_grid.png"):
        picture = out / "pictures" / name
        assert picture.stat().st_size > 1000
        assert str(picture) in text
    # Running it again replaces the demo store.
    assert main(["demo", "--out", str(out), "--size", "64", "--channels", "6", "--phenotypes", "4"]) == 0


def test_cluster_then_apply(store, tmp_path, capsys):
    import joblib

    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "5"]
    assert main([*argv, "--ydim", "5", "--fraction", "0.3", "--save-model", str(model_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "img0: SOM nodes -> 'img0_som_clusters', metaclusters -> 'img0_metaclusters'" in text
    model = joblib.load(model_path)
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)
    pictures = tmp_path / "sample_pictures"
    for name in ("img1_metaclusters.png", "phenotype_heatmap.png", "som_grid.png"):
        assert (pictures / name).stat().st_size > 1000

    other = write_store(tmp_path / "other.zarr", seeds=(0,))
    assert (
        main(["apply", str(other), "--image", "img0", "--model", str(model_path), "--metacluster-labels", "meta"]) == 0
    )
    assert_labels_right(other, "img0", "img0_som_clusters", "meta", model)


def test_cluster_channel_subset_then_apply_to_reordered_channels(store, tmp_path):
    import joblib

    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--channels", "marker_04", "marker_01", "marker_03"]
    argv += ["--n-clusters", "3", "--save-model", str(model_path), "--quiet"]
    assert main(argv) == 0
    model = joblib.load(model_path)
    assert model.channels_ == ["marker_04", "marker_01", "marker_03"]
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)
    # A store whose image lists its channels in another order: apply selects them by name.
    reordered = write_store(tmp_path / "reordered.zarr", seeds=(0, 1), order=[5, 3, 1, 0, 4, 2])
    argv = ["apply", str(reordered), "--image", "img0", "--image", "img1", "--model", str(model_path), "--quiet"]
    assert main(argv) == 0
    for image in ("img0", "img1"):
        assert_labels_right(reordered, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_cluster_channels_chunks_processes(store, tmp_path):
    import joblib

    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--channels", "marker_01", "marker_03", "marker_05"]
    argv += ["--n-clusters", "3", "--chunks", "6,32,48", "--scheduler", "processes", "--quiet"]
    assert main([*argv, "--save-model", str(model_path)]) == 0
    labels = sd.read_zarr(store)["img0_metaclusters"]
    assert labels.data.chunks == ((32, 32, 16), (48, 32))
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", joblib.load(model_path))


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["cluster", "--help"], ["apply", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: pixelflowsom" in capsys.readouterr().out


CLUSTER_ERRORS = [
    (["--image", "nope"], "image(s) ['nope'] not found in"),
    (["--image", "img0", "--channels", "CD3"], "['CD3'] not found in image 'img0'; available channels"),
    (["--image", "img0", "--fraction", "0"], "The 'fraction' parameter of PixelFlowSOM must be a float in the range"),
    (["--image", "img0", "--fraction", "1.5"], "parameter of PixelFlowSOM must be a float in the range (0.0, 1.0]"),
    (["--image", "img0", "--n-samples", "0"], "The 'n_samples' parameter of PixelFlowSOM must be an int in the range"),
    (["--image", "img0", "--fraction", "0.2", "--n-samples", "10"], "Pass fraction (0.2) or n_samples (10), not both:"),
    (["--image", "img0", "--n-clusters", "0"], "The 'n_clusters' parameter of PixelFlowSOM must be an int in the"),
    (["--image", "img0", "--n-clusters", "500"], "n_clusters=500 is larger than the number of SOM nodes"),
    (["--image", "img0", "--chunks", "40,40"], "--chunks 40,40 has 2 sizes; these images need 3: c,y,x"),
    (["--image", "img0", "--chunks", "big"], "--chunks 'big' must be 'auto', an int, or comma-separated ints"),
    (["--image", "img0", "--cluster-labels", "a", "b"], "--cluster-labels got 2 name(s) for 1 image(s)"),
    (["--image", "img0", "--metacluster-labels", "img1"], "Output name 'img1' is already the name of a images"),
    (["--image", "img0", "--save-model", "/nonexistent/m.joblib"], "--save-model: folder '/nonexistent' does not"),
    (["--image", "img0", "--xdim", "0"], "The 'xdim' parameter of PixelFlowSOM must be an int in the range [1, inf)"),
]


@pytest.mark.parametrize(("extra", "message"), CLUSTER_ERRORS)
def test_cluster_errors_exit_2_and_leave_store(store, extra, message, capsys):
    before = snapshot(store)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("pixelflowsom cluster: error: ")
    assert snapshot(store) == before


def test_existing_output_needs_overwrite(store, capsys):
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(store)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img0", "--n-clusters", "3"])
    assert exc.value.code == 2
    assert "'img0_som_clusters' already exists in sdata; pass overwrite=True" in capsys.readouterr().err
    assert snapshot(store) == before
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "4", "--overwrite", "--quiet"]
    assert main([*argv, "--save-model", str(store.parent / "model.joblib")]) == 0
    import joblib

    model = joblib.load(store.parent / "model.joblib")
    assert model.n_clusters_ == 4
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)


def test_store_errors(tmp_path, capsys):
    for path, message in ((tmp_path / "missing.zarr", "does not exist"), (tmp_path, "is not a readable SpatialData")):
        with pytest.raises(SystemExit) as exc:
            main(["cluster", str(path), "--image", "img0"])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_apply_errors(store, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    assert main(["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--save-model", str(model)]) == 0
    capsys.readouterr()
    not_a_model = tmp_path / "junk.joblib"
    import joblib

    joblib.dump({"a": 1}, not_a_model)
    fewer_channels = write_store(tmp_path / "fewer.zarr", channels=4)
    cases = [
        ([str(store), "--image", "img1", "--model", str(tmp_path / "none.joblib")], "does not exist"),
        ([str(store), "--image", "img1", "--model", str(not_a_model)], "is not a fitted PixelFlowSOM"),
        ([str(store), "--image", "nope", "--model", str(model)], "image(s) ['nope'] not found in"),
        ([str(store), "--image", "img0", "--model", str(model)], "'img0_som_clusters' already exists in sdata"),
        ([str(fewer_channels), "--image", "img0", "--model", str(model)], "['marker_04', 'marker_05'] not found"),
    ]
    for argv, message in cases:
        target = Path(argv[0])
        before = snapshot(target)
        with pytest.raises(SystemExit) as exc:
            main(["apply", *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1
        assert snapshot(target) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--size", "big"], "invalid int value: 'big'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["cluster"], "the following arguments are required: store, --image"),
        (["apply", "x.zarr", "--image", "a"], "the following arguments are required: --model"),
    ],
)
def test_argparse_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_module():
    result = subprocess.run([sys.executable, "-m", "pixelflowsom", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("pixelflowsom ")


def test_apply_needs_nothing_of_the_training_store(tmp_path):
    """A saved model is the model: apply works where the training store is not (another machine)."""
    import shutil

    import joblib

    training = write_store(tmp_path / "training.zarr", seeds=(2,))
    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(training), "--image", "img0", "--n-clusters", "3", "--save-model", str(model_path)]
    assert main([*argv, "--quiet"]) == 0
    assert str(training).encode() not in model_path.read_bytes()
    shutil.rmtree(training)
    other = write_store(tmp_path / "other.zarr", seeds=(0,), order=[1, 0, 2, 3, 4, 5])
    assert main(["apply", str(other), "--image", "img0", "--model", str(model_path), "--quiet"]) == 0
    assert_labels_right(other, "img0", "img0_som_clusters", "img0_metaclusters", joblib.load(model_path))


def test_cluster_auto_n_clusters(store, tmp_path, capsys):
    import joblib

    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "auto", "--max-clusters", "10"]
    assert main([*argv, "--fraction", "0.5", "--save-model", str(model_path), "--quiet"]) == 0
    text = capsys.readouterr().out
    model = joblib.load(model_path)
    assert model.n_clusters_ == 4  # the four phenotypes of the synthetic images
    assert "4 metaclusters (chosen from the data)" in text
    assert (tmp_path / "sample_pictures" / "n_clusters.png").stat().st_size > 1000
    assert_labels_right(store, "img0", "img0_som_clusters", "img0_metaclusters", model)
    with pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img1", "--n-clusters", "many"])
    assert exc.value.code == 2
    assert "argument --n-clusters: invalid value: 'many' (an integer or 'auto')" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Object at zarr.*partial is not recognized")
def test_cluster_overwrite_killed_at_any_step_loses_nothing(tmp_path):
    """`cluster --overwrite` killed before every change of the store: the earlier labels are whole, or the new ones."""
    import json
    import shutil
    import subprocess
    import sys

    from pixelflowsom._store import remove_leftovers

    pristine = write_store(tmp_path / "pristine.zarr", seeds=(0, 1))
    old_args = ["--image", "img0", "--image", "img1", "--n-clusters", "3", "--xdim", "4", "--ydim", "4"]
    assert main(["cluster", str(pristine), *old_args, "--quiet", "--pictures", str(tmp_path / "p")]) == 0
    names = ["img0_som_clusters", "img0_metaclusters", "img1_som_clusters", "img1_metaclusters"]
    before = sd.read_zarr(pristine)
    old = {name: before.labels[name].values for name in names}
    # The new labels: another grid (uint16 SOM ids) and other chunks, so stale metadata would show.
    new_args = ["--image", "img0", "--image", "img1", "--n-clusters", "4", "--xdim", "16", "--ydim", "17"]
    new_args += ["--chunks", "6,32,32", "--overwrite", "--pictures", str(tmp_path / "pictures")]
    work = tmp_path / "work"
    work.mkdir()
    child = Path(__file__).with_name("cli_crash_child.py")
    run = subprocess.run(
        [sys.executable, str(child), str(pristine), str(work), *new_args], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    codes = json.loads((work / "result.json").read_text())["codes"]
    assert codes.pop("complete") == 0, run.stderr
    assert len(codes) >= 4  # at least one swap per element
    assert set(codes.values()) == {1}, run.stderr  # killed there, every time
    complete = sd.read_zarr(work / "complete.zarr")
    new = {name: complete.labels[name].values for name in names}
    assert new["img0_som_clusters"].dtype == np.uint16
    images = sorted(p.relative_to(pristine) for p in (pristine / "images").rglob("*") if p.is_file())
    seen = set()
    for point in sorted(codes, key=lambda name: int(name.split("-")[1])):
        store = work / f"{point}.zarr"
        remove_leftovers(store)  # what the next call does first
        sdata = sd.read_zarr(store)
        states = []
        for name in names:
            values = sdata.labels[name].values
            if values.dtype == old[name].dtype and np.array_equal(values, old[name]):
                states.append("old")
            else:
                np.testing.assert_array_equal(values, new[name], err_msg=f"{point}: {name} is neither old nor new")
                assert values.dtype == np.uint16
                states.append("new")
        seen.add(tuple(states))
        for path in images:  # nothing else changed
            assert (store / path).read_bytes() == (pristine / path).read_bytes()
        shutil.rmtree(store)
    assert ("old",) * 4 in seen
    assert ("new",) * 4 in seen or len(seen) > 1  # killed before, between and after the swaps


def test_cluster_n_samples(tmp_path, capsys):
    """--n-samples trains on that many pixels in all; the labels are the nearest nodes of the saved model's codes."""
    import joblib

    store = write_store(tmp_path / "sample.zarr", seeds=(0, 1), nan=False)
    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--channels", "marker_02", "marker_00"]
    argv += ["marker_05", "--n-clusters", "3", "--n-samples", "1001", "--save-model", str(model_path)]
    assert main([*argv, "--quiet"]) == 0
    assert "on 1001 sampled pixels of 2 image(s)" in capsys.readouterr().out
    model = joblib.load(model_path)
    assert model.n_samples_fit_ == 1001
    assert model.n_samples == 1001
    assert model.fraction is None  # not given: the estimator's default applies
    assert model.channels_ == ["marker_02", "marker_00", "marker_05"]
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_demo_n_samples(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--size", "64", "--channels", "6", "--phenotypes", "4", "--n-samples", "500"]
    assert main(argv) == 0
    assert "SOM on 500 sampled pixels (12.2%)" in capsys.readouterr().out


PROGRESS_LINE = re.compile(r"^\[#* *\] +\d+% \| \d+/\d+ tasks \| \d+\.\d s$")


@pytest.fixture
def show_every_computation(monkeypatch):
    """Show the progress of every computation, however short (the tests' computations take milliseconds)."""
    from pixelflowsom import _progress

    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL_SECONDS", 0.02)


def test_progress_on_stderr_unless_quiet(store, show_every_computation, capsys):
    argv = ["cluster", str(store), "--image", "img0", "--n-clusters", "3", "--pictures", str(store.parent / "p")]
    assert main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "tasks" not in out
    assert main([*argv, "--overwrite"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) >= 2  # the training sample, the labels (not a terminal: one plain line per computation)
    assert all(PROGRESS_LINE.match(line) for line in lines), err
    assert "100% |" in lines[-1]
    assert "tasks" not in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_in_place_on_a_terminal(show_every_computation):
    import dask
    import dask.array as da

    from pixelflowsom._progress import progress

    stream = _Terminal()
    with progress(stream=stream):
        da.ones(10, chunks=2).sum().compute()
        assert stream.getvalue().endswith("\n")  # the line ends with its computation
        dask.compute(da.ones(4, chunks=1) + 1, scheduler="synchronous")
    text = stream.getvalue()
    assert text.count("\n") == 2  # one line per computation
    for line in text.split("\n")[:-1]:
        assert line.startswith("\r[")
        assert PROGRESS_LINE.match(line.split("\r")[-1].rstrip()), line
        assert "100% |" in line.split("\r")[-1]


def test_progress_plain_lines_only_for_long_computations():
    """Off a terminal: a computation shorter than MINIMUM_SECONDS prints nothing, nor does a tick of a short one."""
    from pixelflowsom._progress import MINIMUM_SECONDS, ProgressLine

    stream = io.StringIO()
    line = ProgressLine(stream)
    line.begin()
    line.update(1, 4)
    line.tick()
    line.end(complete=True)
    assert stream.getvalue() == ""
    line.begin()
    line._start -= MINIMUM_SECONDS  # as if it had run that long
    line.update(1, 4)
    line.tick()
    assert stream.getvalue() == ""  # no plain line before PLAIN_EVERY_SECONDS
    line.end(complete=True)
    assert PROGRESS_LINE.match(stream.getvalue().rstrip("\n"))
    assert "100% | 4/4 tasks" in stream.getvalue()


def test_progress_costs_no_wait_per_computation():
    """dask's ProgressBar(dt=1.0) waited up to a second at the end of every computation; this display does not."""
    import time

    import dask.array as da

    from pixelflowsom._progress import progress

    x = da.ones(4, chunks=2).sum()
    with progress(stream=_Terminal()):
        x.compute()  # warm-up
        t0 = time.perf_counter()
        for _ in range(10):
            x.compute()
        seconds = time.perf_counter() - t0
    assert seconds < 1.0, seconds


def test_progress_on_a_distributed_cluster(store, tmp_path, show_every_computation, capsys):
    """--scheduler ADDRESS: the scheduler's reports give progress lines on stderr (none with --quiet), right labels."""
    import joblib
    from distributed import LocalCluster

    model_path = tmp_path / "model.joblib"
    argv = ["cluster", str(store), "--image", "img0", "--image", "img1", "--n-clusters", "3"]
    argv += ["--save-model", str(model_path), "--pictures", str(tmp_path / "p")]
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
        out, err = capsys.readouterr()
        assert f"Using the dask cluster at {cluster.scheduler_address}" in out
        lines = err.splitlines()
        assert lines, "no progress line"
        assert all(PROGRESS_LINE.match(line) for line in lines), err
        assert main([*argv, "--scheduler", cluster.scheduler_address, "--overwrite", "--quiet"]) == 0
        assert capsys.readouterr().err == ""
    model = joblib.load(model_path)
    for image in ("img0", "img1"):
        assert_labels_right(store, image, f"{image}_som_clusters", f"{image}_metaclusters", model)


def test_scheduler_address_without_a_scheduler(store, capsys):
    import dask
    import distributed  # noqa: F401 - its configuration first, so that the config.set below leaves it whole

    before = snapshot(store)
    with dask.config.set({"distributed.comm.timeouts.connect": "0.5s"}), pytest.raises(SystemExit) as exc:
        main(["cluster", str(store), "--image", "img0", "--scheduler", "tcp://127.0.0.1:1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pixelflowsom cluster: error: --scheduler 'tcp://127.0.0.1:1': no dask scheduler to connect")
    assert err.count("\n") == 1
    assert snapshot(store) == before
