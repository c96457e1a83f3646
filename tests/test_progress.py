"""The progress display (pixelflowsom._progress) and the phases it labels its lines with (pixelflowsom._log)."""

import importlib.util
import io
import logging
import re
import threading
import time

import dask
import numba
import pytest

from pixelflowsom import _log, _progress
from pixelflowsom._progress import COMPILING_NOTICE, MINIMUM_SECONDS, ProgressLine, progress, settle

#: One line: ``LABEL  [###   ]  50% | 6/12 tasks | 3.2 s`` or, for a phase without dask work, ``LABEL ... 3.2 s``.
LINE = re.compile(r"^(?P<label>\S.*?)(  \[#* *\] +\d+% \| (?P<done>\d+)/(?P<total>\d+) tasks \|| \.\.\.) \d+\.\d s$")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def show_everything(monkeypatch):
    """Show every phase and computation, however short (the tests' take milliseconds)."""
    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL_SECONDS", 0.02)


@pytest.fixture
def kernels_not_compiled_yet(monkeypatch):
    """As in a process that has compiled none of the package's kernels; this module's functions count as kernels."""
    monkeypatch.setattr(_progress, "_compiling_noticed", False)
    monkeypatch.setattr(_progress, "_KERNEL_MODULES", ("pixelflowsom", __name__))


def tasks(n, seconds=0.0):
    """A dask computation of exactly ``n`` tasks (``dask.compute(*tasks(n))``), each sleeping ``seconds``."""

    def work(i):
        time.sleep(seconds)
        return i

    return [dask.delayed(work, pure=False)(i) for i in range(n)]


def lines_of(stream):
    """The lines written on a stream that is not a terminal, each checked against LINE (or the compile notice)."""
    lines = stream.getvalue().splitlines()
    for line in lines:
        assert line == COMPILING_NOTICE or LINE.match(line), line
    return lines


def parse(line):
    match = LINE.match(line)
    assert match, line
    return match["label"], match["done"] and int(match["done"]), match["total"] and int(match["total"])


# ----------------------------------------------------------------------------- _log


def test_current_phase_nests_and_listeners_hear_start_and_end(caplog):
    heard = []
    _log.add_listener(lambda event, name: heard.append((event, name, _log.current_phase())))
    listener = _log._listeners[-1]
    try:
        assert _log.current_phase() is None
        with caplog.at_level(logging.INFO, logger="pixelflowsom"), _log.phase("outer"):
            assert _log.current_phase() == "outer"
            with _log.phase("inner"):
                assert _log.current_phase() == "inner"
            assert _log.current_phase() == "outer"
        assert _log.current_phase() is None
        with pytest.raises(RuntimeError), _log.phase("fails"):
            raise RuntimeError
        assert _log.current_phase() is None
    finally:
        _log.remove_listener(listener)
    _log.remove_listener(listener)  # not there any more: nothing happens
    assert heard == [
        ("start", "outer", "outer"),
        ("start", "inner", "inner"),
        ("end", "inner", "outer"),
        ("end", "outer", None),
        ("start", "fails", "fails"),
        ("end", "fails", None),  # told of the end, with an error too
    ]
    assert [(r.phase, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("inner", "inner"),
        ("outer", "outer"),
    ]  # logged when they end without an error only


def test_current_phase_is_the_calling_threads():
    seen = []
    with _log.phase("main"):
        thread = threading.Thread(target=lambda: seen.append(_log.current_phase()))
        thread.start()
        thread.join()
    assert seen == [None]


# ----------------------------------------------------------------------------- one line per phase


def test_computations_of_a_phase_share_one_labelled_line(show_everything):
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("sample the pixels"):
        dask.compute(*tasks(3))
        dask.compute(*tasks(2), scheduler="synchronous")
    assert [parse(line) for line in lines_of(stream)] == [("sample the pixels", 5, 5)]


def test_computations_outside_phases_are_labelled_compute(show_everything):
    stream = io.StringIO()
    with progress(stream=stream):
        dask.compute(*tasks(3))
        with _log.phase("x"):
            dask.compute(*tasks(2))
        dask.compute(*tasks(4))
    assert [parse(line) for line in lines_of(stream)] == [("compute", 3, 3), ("x", 2, 2), ("compute", 4, 4)]


def test_a_phase_without_dask_work_shows_its_seconds(show_everything):
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("train the SOM"):
        pass
    assert lines_of(stream) == ["train the SOM ... 0.0 s"]


def test_nested_phases_the_innermost_has_the_line(show_everything):
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("outer"):
        dask.compute(*tasks(1))
        with _log.phase("inner"):
            dask.compute(*tasks(2))
        dask.compute(*tasks(3))
    assert [parse(line) for line in lines_of(stream)] == [("outer", 1, 1), ("inner", 2, 2), ("outer", 3, 3)]


def test_settle_ends_the_line_and_the_phase_goes_on_in_a_new_one(show_everything):
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("label and write"):
        dask.compute(*tasks(2))
        settle()
        assert [parse(line) for line in lines_of(stream)] == [("label and write", 2, 2)]
        dask.compute(*tasks(1))
    assert [parse(line) for line in lines_of(stream)] == [("label and write", 2, 2), ("label and write", 1, 1)]


def test_a_block_opened_inside_a_phase_labels_its_line_with_it(show_everything):
    stream = io.StringIO()
    with _log.phase("outer"):
        with progress(stream=stream):
            dask.compute(*tasks(2))
        dask.compute(*tasks(1))  # after the block: not shown
    assert [parse(line) for line in lines_of(stream)] == [("outer", 2, 2)]


def test_short_phases_and_computations_print_nothing():
    """MINIMUM_SECONDS (0.5 s) applies to a phase's whole line, and to a computation outside phases."""
    stream = io.StringIO()
    with progress(stream=stream):
        with _log.phase("quick"):
            dask.compute(*tasks(2))
            dask.compute(*tasks(2))
        dask.compute(*tasks(2))
    assert stream.getvalue() == ""


def test_a_phase_is_shown_once_it_has_run_long_enough(monkeypatch):
    """Each computation is short, the phase is not: its line shows them all."""
    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.05)
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("x"):
        for _ in range(3):
            dask.compute(*tasks(1, seconds=0.02), scheduler="synchronous")
    assert [parse(line) for line in lines_of(stream)] == [("x", 3, 3)]


def test_nothing_when_disabled(show_everything, kernels_not_compiled_yet):
    stream = io.StringIO()
    callbacks = set(dask.callbacks.Callback.active)
    with progress(stream=stream, enabled=False):
        assert _log._listeners == []
        assert dask.callbacks.Callback.active == callbacks
        with _log.phase("x"):
            dask.compute(*tasks(2))
        dask.compute(*tasks(2))
        numba.njit(cache=False)(lambda x: x + 1)(1)
    assert stream.getvalue() == ""
    assert _progress._compiling_noticed is False


def test_the_block_leaves_nothing_registered(show_everything):
    callbacks = set(dask.callbacks.Callback.active)
    with progress(stream=io.StringIO()):
        assert len(_log._listeners) == 1
    assert _log._listeners == []
    assert dask.callbacks.Callback.active == callbacks


# ----------------------------------------------------------------------------- the line itself


def test_line_redrawn_in_place_on_a_terminal(show_everything):
    stream = _Terminal()
    with progress(stream=stream):
        with _log.phase("x"):
            dask.compute(*tasks(3))
            assert not stream.getvalue().endswith("\n")  # the phase's line goes on
            dask.compute(*tasks(1), scheduler="synchronous")
        assert stream.getvalue().endswith("\n")  # and ends with the phase
        dask.compute(*tasks(2))
    text = stream.getvalue()
    assert text.count("\n") == 2  # one line for the phase, one for the computation outside it
    finals = []
    for line in text.split("\n")[:-1]:
        assert line.startswith("\r")
        for drawn in line.split("\r")[1:]:
            assert LINE.match(drawn.rstrip()), drawn
        finals.append(parse(line.split("\r")[-1].rstrip()))
    assert finals == [("x", 4, 4), ("compute", 2, 2)]


def test_a_phase_without_dask_work_is_redrawn_while_it_runs(monkeypatch):
    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL_SECONDS", 0.01)
    stream = _Terminal()
    with progress(stream=stream), _log.phase("train the SOM"):
        time.sleep(0.2)
        assert stream.getvalue().startswith("\rtrain the SOM ... 0.")  # drawn by the redraw thread
    assert stream.getvalue().endswith(" s\n")


def test_line_cut_to_the_terminal_width():
    line = ProgressLine(io.StringIO())
    line._columns = 60
    line.begin("a phase with a name far too long for this terminal")
    line.update(1, 2)
    text = line._text(1.0)
    assert len(text) == 59
    assert text.startswith("a phase")
    assert text.endswith("  50% | 1/2 tasks | 1.0 s")
    line._columns = 30
    assert line._text(1.0) == "  [##########          ]  50%"


def test_plain_lines_only_for_long_lines():
    """Off a terminal: a line shorter than MINIMUM_SECONDS prints nothing, nor does a tick of a short one."""
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.begin()
    line.update(1, 4)
    line.tick()
    line.end(complete=True)
    assert stream.getvalue() == ""
    line.begin("x")
    line._start -= MINIMUM_SECONDS  # as if it had run that long
    line.update(1, 4)
    line.fold(complete=False)  # a computation that failed: 1 of its 4 tasks done
    line.update(2, 3)
    line.tick()
    assert stream.getvalue() == ""  # no plain line before PLAIN_EVERY_SECONDS
    line.end(complete=True)
    assert parse(stream.getvalue().rstrip("\n")) == ("x", 4, 7)


def test_progress_costs_no_wait_per_computation():
    """dask's ProgressBar(dt=1.0) waited up to a second at the end of every computation; this display does not."""
    import dask.array as da

    x = da.ones(4, chunks=2).sum()
    with progress(stream=_Terminal()):
        x.compute()  # warm-up
        t0 = time.perf_counter()
        for _ in range(10):
            with _log.phase("x"):
                x.compute()
        seconds = time.perf_counter() - t0
    assert seconds < 1.0, seconds


# ----------------------------------------------------------------------------- kernel compilation


def test_compiling_notice_once_per_process(show_everything, kernels_not_compiled_yet):
    stream = io.StringIO()
    with progress(stream=stream), _log.phase("train the SOM"):
        numba.njit(cache=False)(lambda x: x + 1)(1)
        numba.njit(cache=False)(lambda x: x + 2)(1)
    with progress(stream=stream):
        numba.njit(cache=False)(lambda x: x + 3)(1)
    lines = lines_of(stream)
    assert lines[0] == COMPILING_NOTICE
    assert lines.count(COMPILING_NOTICE) == 1
    assert [parse(line)[0] for line in lines[1:]] == ["train the SOM"]


def test_compiling_notice_from_a_dask_worker_thread(show_everything, kernels_not_compiled_yet):
    def compile_in_a_task(i):
        assert threading.current_thread() is not threading.main_thread()
        return numba.njit(cache=False)(lambda x: x + 1)(i)

    stream = io.StringIO()
    with progress(stream=stream):
        dask.compute(dask.delayed(compile_in_a_task)(1), scheduler="threads")
    assert lines_of(stream).count(COMPILING_NOTICE) == 1


def test_no_compiling_notice_without_a_compilation(show_everything, kernels_not_compiled_yet):
    compiled = numba.njit(cache=False)(lambda x: x + 1)
    compiled(1)
    stream = io.StringIO()
    with progress(stream=stream):
        compiled(2)
        dask.compute(*tasks(2))
    assert COMPILING_NOTICE not in stream.getvalue()
    assert _progress._compiling_noticed is False


def test_no_compiling_notice_for_the_functions_of_other_libraries(show_everything, monkeypatch):
    monkeypatch.setattr(_progress, "_compiling_noticed", False)  # the package's kernels only (the default)
    stream = io.StringIO()
    with progress(stream=stream):
        numba.njit(cache=False)(lambda x: x + 1)(1)  # a function of this test module, not of pixelflowsom
    assert COMPILING_NOTICE not in stream.getvalue()


def test_no_compiling_notice_for_a_kernel_loaded_from_numbas_cache(tmp_path, monkeypatch):
    """numba fires "numba:compile" for a real compilation only: not when it loads the kernel from its disk cache."""
    monkeypatch.setattr(_progress, "_KERNEL_MODULES", ("pixelflowsom_test_cached_kernel",))
    source = tmp_path / "cached_kernel.py"
    source.write_text("import numba\n\n\n@numba.njit(cache=True)\ndef kernel(x):\n    return x + 1\n")

    def fresh_kernel(name):
        spec = importlib.util.spec_from_file_location(f"pixelflowsom_test_cached_kernel_{name}", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.kernel

    first = fresh_kernel("first")
    monkeypatch.setattr(_progress, "_compiling_noticed", False)
    stream = io.StringIO()
    with progress(stream=stream):
        assert first(1) == 2  # compiled, then saved to the cache
    assert stream.getvalue() == COMPILING_NOTICE + "\n"

    second = fresh_kernel("second")  # a new dispatcher of the same function: as in the next run
    monkeypatch.setattr(_progress, "_compiling_noticed", False)
    stream = io.StringIO()
    with progress(stream=stream):
        assert second(1) == 2
    assert stream.getvalue() == ""
    assert sum(second.stats.cache_hits.values()) == 1


# ----------------------------------------------------------------------------- dask.distributed


def test_phases_on_a_distributed_client(monkeypatch):
    """The scheduler's reports count the phase's computations on its line, and redraw a phase without dask work."""
    from distributed import Client, LocalCluster

    monkeypatch.setattr(_progress, "MINIMUM_SECONDS", 0.0)
    monkeypatch.setattr(_progress, "INTERVAL_SECONDS", 0.02)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        stream = _Terminal()
        with progress(client, stream=stream):
            with _log.phase("x"):
                dask.compute(*tasks(2, seconds=0.2))
                dask.compute(*tasks(2, seconds=0.2))
            with _log.phase("train the SOM"):
                time.sleep(0.3)
    text = stream.getvalue()
    lines = text.split("\n")
    assert lines[-1] == ""
    finals = [parse(line.split("\r")[-1].rstrip()) for line in lines[:-1]]
    assert [label for label, _, _ in finals] == ["x", "train the SOM"], text
    assert finals[0][1] == finals[0][2] > 0  # the tasks the scheduler reported, all done
    assert lines[1].count("\rtrain the SOM ... ") > 1  # redrawn on the scheduler's reports while it ran
