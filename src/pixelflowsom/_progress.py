"""Show the progress of the package's phases and dask computations on stderr: one line per phase.

:func:`progress` wraps a block of work (the command line wraps each command in it). It shows one line per phase of
:func:`pixelflowsom._log.phase` run in the block (sampling, training the SOM, metaclustering, ...), labelled with the
phase's name, e.g. ``train the SOM  [#####     ]  50% | 6/12 tasks | 3.2 s``. The line runs from the start of the
phase to its end (or to :func:`settle`), and every dask computation run within the phase adds its tasks to it; a phase
that runs no dask computation (the SOM trains in numba kernels) shows ``train the SOM ... 12.3 s``. A dask computation
run outside any phase has a line of its own, labelled ``compute``. Nested phases: the innermost one has the line; the
outer phase gets a new line for what it runs after it. A line is shown once it has run ``MINIMUM_SECONDS`` (shorter ones
print nothing): on a terminal, redrawn in place (cut to the terminal's width) and kept when it ends; otherwise a plain
line when it ends (and one every ``PLAIN_EVERY_SECONDS`` while it runs). The phases are those :mod:`pixelflowsom._log`
announces to its listeners (:func:`pixelflowsom._log.add_listener`); phases run at once in several threads share the one
line.

When numba starts compiling one of the package's kernels inside the block (they are cached on disk, ``cache=True``:
that is the first run after an install or an upgrade, or every run where numba cannot write its cache), the line
``COMPILING_NOTICE`` is written, once per process. Only compilations in this process are seen: on a
``distributed.Client``, the workers compile the kernels their tasks run in their own processes, unseen (the kernels
the client process runs itself, the SOM training, are seen).

The display costs next to nothing (``benchmarks/bench_cli.py``: within 10% of ``--quiet``):

- On dask's local schedulers (threads, processes, synchronous), a :class:`dask.callbacks.Callback` counts the
  finished tasks (an increment per task, in the scheduler's thread; the start and the end of a computation take a
  lock) and one thread, started once for the whole block, redraws the line (a phase's elapsed seconds included).
  ``dask.diagnostics.ProgressBar`` instead starts a timer thread per computation and joins it at the end, which waits
  for the thread's sleep (up to ``dt`` seconds) on every computation, however small.
- On a ``distributed.Client``, the scheduler reports every ``INTERVAL_SECONDS`` how many tasks of the computations
  the client is waiting for are done, on one ``feed`` stream (as ``distributed.diagnostics.progressbar`` does); every
  report also redraws the line, so a phase without dask work is shown too. The computations the library starts with
  ``dask.compute`` are seen from the scheduler only: computations that end between two reports are not counted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from contextlib import contextmanager, suppress

from dask.callbacks import Callback

from . import _log

#: A line is shown once its phase or computation has run this long (seconds).
MINIMUM_SECONDS = 0.5
#: Seconds between two redraws on a terminal, and between two reports of a dask.distributed scheduler.
INTERVAL_SECONDS = 0.2
#: Off a terminal: seconds between two plain lines about a running phase or computation.
PLAIN_EVERY_SECONDS = 30.0
#: The label of the line of a dask computation run outside any phase.
COMPUTE_LABEL = "compute"
#: Written (once per process) when numba starts compiling one of the package's kernels inside a progress() block.
COMPILING_NOTICE = "compiling kernels (first run only; cached for the next runs)"

_KERNEL_MODULES = "pixelflowsom"  # the compilations noticed: of the functions of these modules (str.startswith)
_compiling_noticed = False  # COMPILING_NOTICE has been written (once per process)
_active: list = []  # the sources of the running progress() blocks (settle() closes their lines)


@contextmanager
def progress(client=None, *, enabled=True, stream=None):
    """Show the progress of the phases and the dask computations run inside the block, one line per phase.

    Parameters
    ----------
    client : distributed.Client or None, default=None
        The client the block computes on; None for dask's local schedulers.
    enabled : bool, default=True
        False: show nothing, and start nothing.
    stream : file-like, optional
        Where to draw (default: ``sys.stderr``); a terminal gets each line updated in place.

    Yields
    ------
    None
    """
    if not enabled:
        yield
        return
    line = ProgressLine(sys.stderr if stream is None else stream)
    source = _LocalTasks(line) if client is None else _SchedulerFeed(client, line)
    source.open()
    _log.add_listener(source.phase_event)
    _active.append(source)
    complete = False
    try:
        with _compiling_notice(line):
            yield
        complete = True
    finally:
        _active.remove(source)
        _log.remove_listener(source.phase_event)
        source.close(complete=complete)


def settle() -> None:
    """End the progress line of every running :func:`progress` block, as complete (call it before printing).

    Inside a phase, what the phase runs afterwards gets a new line.
    """
    for source in list(_active):
        source.settle()


@contextmanager
def _compiling_notice(line: ProgressLine):
    """Within the block, write ``COMPILING_NOTICE`` on ``line`` when numba starts compiling a kernel of the package.

    :func:`pixelflowsom._numba_compat.on_compile_start` (numba's event API) calls back from the thread that compiles,
    whichever it is (dask's worker threads included: the listeners are process-wide), and only for a real compilation:
    a dispatcher that loads its kernel from the on-disk cache starts none. The dispatcher's ``py_func`` tells whose
    function compiles: only the package's kernels are cached, so only their compilation is a first run's.
    """
    if _compiling_noticed:
        yield
        return
    from ._numba_compat import on_compile_start

    def compiling(dispatcher):
        global _compiling_noticed
        if _compiling_noticed:
            return
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
        if module.startswith(_KERNEL_MODULES):
            _compiling_noticed = True  # numba compiles under its global compiler lock: one thread at a time
            line.note(COMPILING_NOTICE)

    with on_compile_start(compiling):
        yield


class ProgressLine:
    """The line of one phase or computation at a time, drawn on ``stream``; thread-safe.

    The line counts the tasks of the computation running (:meth:`update`) and of the finished ones (:meth:`fold`).

    Parameters
    ----------
    stream : file-like
        Where to draw: in place if it is a terminal, plain lines otherwise.
    """

    width = 20

    def __init__(self, stream):
        self._stream = stream
        try:
            self._tty = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            self._tty = False
        self._columns = 0  # on a terminal: its width, if known (a longer line is cut short: it would wrap)
        if self._tty:
            with suppress(AttributeError, ValueError, OSError):
                self._columns = os.get_terminal_size(stream.fileno()).columns
        self._lock = threading.Lock()
        self._label = COMPUTE_LABEL
        self._start = None  # time.perf_counter() at the start of the line; None: no line running
        self._done = self._total = 0  # tasks of the running computation
        self._done_before = self._total_before = 0  # tasks of the line's finished computations
        self._drawn = 0  # on a terminal: length of the running line as drawn (0: not drawn)
        self._last_plain = 0.0

    @property
    def running(self) -> bool:
        """Whether a line is running."""
        return self._start is not None

    def begin(self, label: str = COMPUTE_LABEL) -> None:
        """Start a new line, labelled ``label``."""
        with self._lock:
            self._label = label
            self._start = self._last_plain = time.perf_counter()
            self._done = self._total = self._done_before = self._total_before = self._drawn = 0

    def update(self, done: int, total: int) -> None:
        """Record that ``done`` of the ``total`` tasks of the running computation are done (drawn on the next tick)."""
        self._done, self._total = done, total

    def fold(self, complete: bool) -> None:
        """Count the running computation as finished (``complete``: all its tasks are done); the line goes on."""
        with self._lock:
            self._done_before += self._total if complete else self._done
            self._total_before += self._total
            self._done = self._total = 0

    def tick(self) -> None:
        """Redraw a line that has run for ``MINIMUM_SECONDS`` (plain lines: now and then)."""
        with self._lock:
            if self._start is None:
                return
            now = time.perf_counter()
            if now - self._start < MINIMUM_SECONDS:
                return
            if self._tty:
                self._draw(now - self._start)
            elif now - self._last_plain >= PLAIN_EVERY_SECONDS:
                self._last_plain = now
                self._write(self._text(now - self._start) + "\n")

    def end(self, complete: bool) -> None:
        """End the line (``complete``: all the tasks of its running computation are done); its last state stays."""
        with self._lock:
            if self._start is None:
                return
            elapsed = time.perf_counter() - self._start
            if complete:
                self._done = self._total
            if elapsed >= MINIMUM_SECONDS or self._drawn:
                if self._tty:
                    self._draw(elapsed)
                    self._write("\n")
                else:
                    self._write(self._text(elapsed) + "\n")
            self._start = None

    def note(self, text: str) -> None:
        """Write ``text`` as a line of its own (the running line is drawn again below it on the next tick)."""
        with self._lock:
            self._write(("\n" if self._drawn and self._start is not None else "") + text + "\n")
            self._drawn = 0

    def _text(self, elapsed: float) -> str:
        done, total = self._done_before + self._done, self._total_before + self._total
        if total:
            fraction = min(done / total, 1.0)
            bar = "#" * int(self.width * fraction)
            rest = f"  [{bar:<{self.width}}] {int(100 * fraction):3d}% | {done}/{total} tasks | {elapsed:.1f} s"
        else:
            rest = f" ... {elapsed:.1f} s"
        text = self._label + rest
        if self._columns and len(text) >= self._columns:  # the label is cut short, then the rest
            text = (self._label[: max(0, self._columns - 1 - len(rest))] + rest)[: self._columns - 1]
        return text

    def _draw(self, elapsed: float) -> None:
        text = self._text(elapsed)
        self._write("\r" + text + " " * max(0, self._drawn - len(text)))
        self._drawn = len(text)

    def _write(self, text: str) -> None:
        with suppress(AttributeError, ValueError, OSError):  # no stream, a closed one or a broken pipe
            self._stream.write(text)
            self._stream.flush()


class _Source:
    """Which line a :class:`ProgressLine` shows, from the phases announced and the computations a subclass sees.

    The line of the innermost running phase runs from its start to its end, and the computations run within it add
    their tasks to it; outside any phase, a computation has a line of its own. Its methods run once per phase or
    computation event, under ``self._lock``, never per task.
    """

    def __init__(self, line: ProgressLine):
        self._line = line
        self._lock = threading.RLock()
        running = _log.current_phase()  # a block opened inside a phase: that phase has the line until it ends
        self._phases = [] if running is None else [running]  # the running phases, innermost last
        self._alone = False  # the running line is a computation's, outside any phase: it ends with it
        if running is not None:
            line.begin(running)

    def phase_event(self, event: str, name: str) -> None:
        """Start or end the line of a phase (the listener of :func:`pixelflowsom._log.add_listener`)."""
        with self._lock:
            if event == "start":
                self._phases.append(name)
            elif name in self._phases:
                del self._phases[len(self._phases) - 1 - self._phases[::-1].index(name)]
            else:
                return  # a phase that started before the block (an outer one): its line never started
            self._end_line(complete=True)
            self._begin_phase_line()

    def settle(self) -> None:
        with self._lock:
            self._end_line(complete=True)
            self._begin_phase_line()

    def close(self, complete: bool) -> None:
        with self._lock:
            self._phases.clear()
            self._end_line(complete)

    def _begin_phase_line(self) -> None:
        if self._phases:
            self._line.begin(self._phases[-1])

    def _end_line(self, complete: bool) -> None:
        self._alone = False
        self._line.end(complete)

    def _computation_begins(self) -> None:
        if not self._line.running:
            self._alone = not self._phases
            self._line.begin(self._phases[-1] if self._phases else COMPUTE_LABEL)

    def _computation_ends(self, complete: bool) -> None:
        if self._alone:
            self._end_line(complete)
        else:
            self._line.fold(complete)


class _LocalTasks(_Source, Callback):
    """Counts the tasks of the computations of dask's local schedulers into a :class:`ProgressLine`.

    The callbacks run in the scheduler's thread; per task, they only count. A thread of its own redraws the line.
    """

    def __init__(self, line: ProgressLine):
        Callback.__init__(self)
        _Source.__init__(self, line)
        self._done = self._total = 0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="pixelflowsom-progress", daemon=True)

    def open(self) -> None:
        self.register()
        self._ticker.start()

    def close(self, complete: bool) -> None:
        with suppress(KeyError):  # unregistered already
            self.unregister()
        self._stop.set()
        self._ticker.join()
        _Source.close(self, complete)

    def _tick(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self._line.tick()

    def _start(self, dsk):
        self._done = self._total = 0
        with self._lock:
            self._computation_begins()

    def _start_state(self, dsk, state):
        self._total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._line.update(0, self._total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self._done += 1
        self._line.update(self._done, self._total)

    def _finish(self, dsk, state, errored):
        with self._lock:
            self._computation_ends(complete=not errored)


class _SchedulerFeed(_Source):
    """Feeds a :class:`ProgressLine` with what a dask.distributed scheduler reports about a client's computations.

    A thread of its own reads the scheduler's reports (:func:`pixelflowsom._distributed_compat.client_progress`). A
    computation is identified by the task groups of the keys the client waits for; it ends when the client waits for
    other keys or none. Every report redraws the line.
    """

    def __init__(self, client, line: ProgressLine):
        super().__init__(line)
        self._address = client.scheduler.address
        self._connection_args = client.connection_args
        self._client_id = client.id
        self._current = None  # the computation counted
        self._settled = None  # the computation whose line ended (it may still be reported until the client lets go)
        self._erred = 0
        self._closing = threading.Event()
        self._loop = self._task = None
        self._thread = threading.Thread(target=self._run, name="pixelflowsom-progress", daemon=True)

    def open(self) -> None:
        self._thread.start()

    def close(self, complete: bool) -> None:
        self._closing.set()
        loop, task = self._loop, self._task
        if loop is not None:
            with suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=10)
        super().close(complete)

    def _end_line(self, complete: bool) -> None:
        # The computation counted ends with the line (the scheduler may report it a little longer: not again).
        if self._current is not None:
            self._settled, self._current = self._current, None
            complete = complete and not self._erred
        super()._end_line(complete)

    def _run(self) -> None:
        try:
            asyncio.run(self._listen())
        except asyncio.CancelledError:
            pass
        except Exception as error:  # noqa: BLE001 - the display must never fail the command; say why it stopped
            self._line.note(f"pixelflowsom: no progress from the dask scheduler ({type(error).__name__}: {error})")

    async def _listen(self) -> None:
        from ._distributed_compat import client_progress

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._closing.is_set():
            return
        async with client_progress(self._address, self._connection_args, self._client_id, INTERVAL_SECONDS) as reports:
            async for report in reports:
                self._report(report)

    def _report(self, report: dict) -> None:
        with self._lock:
            computation = report["id"] or None
            if computation != self._current:
                if self._current is not None:
                    self._current = None
                    self._computation_ends(complete=not self._erred)
                if computation is not None and computation != self._settled:
                    self._current = computation
                    self._erred = 0
                    self._computation_begins()
                if computation is None:
                    self._settled = None
            if self._current is not None:
                self._erred = report["erred"]
                self._line.update(report["done"], report["total"])
        self._line.tick()
