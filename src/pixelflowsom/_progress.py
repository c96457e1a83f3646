"""Show the progress of dask computations on stderr: one line updated in place on a terminal, plain lines otherwise.

:func:`progress` wraps a block of dask work (the command line wraps each command in it). Every computation that runs
for ``MINIMUM_SECONDS`` or longer is shown as ``[#####     ]  50% | 6/12 tasks | 3.2 s``: on a terminal, one line
redrawn in place and kept when the computation ends; otherwise a plain line when it ends (and one every
``PLAIN_EVERY_SECONDS`` while it runs). Shorter computations print nothing.

- On dask's local schedulers (threads, processes, synchronous), a :class:`dask.callbacks.Callback` counts the
  finished tasks (an increment per task, in the scheduler's thread) and one thread, started once for the whole block,
  redraws the line. ``dask.diagnostics.ProgressBar`` instead starts a timer thread per computation and joins it at
  the end, which waits for the thread's sleep (up to ``dt`` seconds) on every computation, however small.
- On a ``distributed.Client``, the scheduler reports every ``INTERVAL_SECONDS`` how many tasks of the computations
  the client is waiting for are done, on one ``feed`` stream (as ``distributed.diagnostics.progressbar`` does). The
  computations the library starts with ``dask.compute`` are seen from the scheduler only: computations that end
  between two reports are not shown.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from contextlib import contextmanager, suppress

from dask.callbacks import Callback

#: A computation is shown once it has run this long (seconds).
MINIMUM_SECONDS = 0.5
#: Seconds between two redraws on a terminal, and between two reports of a dask.distributed scheduler.
INTERVAL_SECONDS = 0.2
#: Off a terminal: seconds between two plain lines about a running computation.
PLAIN_EVERY_SECONDS = 30.0

_active: list = []  # the sources of the running progress() blocks (settle() closes their lines)


@contextmanager
def progress(client=None, *, enabled=True, stream=None):
    """Show the progress of the dask computations run inside the block.

    Parameters
    ----------
    client : distributed.Client or None, default=None
        The client the block computes on; None for dask's local schedulers.
    enabled : bool, default=True
        False: show nothing, and start nothing.
    stream : file-like, optional
        Where to draw (default: ``sys.stderr``); a terminal gets one line updated in place per computation.

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
    _active.append(source)
    complete = False
    try:
        yield
        complete = True
    finally:
        _active.remove(source)
        source.close(complete=complete)


def settle() -> None:
    """End the progress line of every running :func:`progress` block, as complete (call it before printing)."""
    for source in list(_active):
        source.settle()


class ProgressLine:
    """The progress of one computation at a time, drawn on ``stream``; thread-safe.

    Parameters
    ----------
    stream : file-like
        Where to draw: in place if it is a terminal, plain lines otherwise.
    """

    width = 30

    def __init__(self, stream):
        self._stream = stream
        try:
            self._tty = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            self._tty = False
        self._lock = threading.Lock()
        self._start = None  # time.perf_counter() at the start of the running computation; None: none running
        self._done = self._total = 0
        self._drawn = 0  # on a terminal: length of the line drawn for the running computation (0: not drawn)
        self._last_plain = 0.0

    @property
    def running(self) -> bool:
        """Whether a computation is running."""
        return self._start is not None

    def begin(self) -> None:
        """Start showing a new computation."""
        with self._lock:
            self._start = self._last_plain = time.perf_counter()
            self._done = self._total = self._drawn = 0

    def update(self, done: int, total: int) -> None:
        """Record that ``done`` of the ``total`` tasks of the running computation are done (drawn on the next tick)."""
        self._done, self._total = done, total

    def tick(self) -> None:
        """Redraw the line of a computation that has run for ``MINIMUM_SECONDS`` (plain lines: now and then)."""
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
        """End the running computation (``complete``: all its tasks are done); its last line stays."""
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
        """Write ``text`` as a line of its own."""
        with self._lock:
            self._write(("\n" if self._drawn and self._start is not None else "") + text + "\n")
            self._drawn = 0

    def _text(self, elapsed: float) -> str:
        done, total = self._done, self._total
        fraction = min(done / total, 1.0) if total else 0.0
        bar = "#" * int(self.width * fraction)
        return f"[{bar:<{self.width}}] {int(100 * fraction):3d}% | {done}/{total} tasks | {elapsed:.1f} s"

    def _draw(self, elapsed: float) -> None:
        text = self._text(elapsed)
        self._write("\r" + text + " " * max(0, self._drawn - len(text)))
        self._drawn = len(text)

    def _write(self, text: str) -> None:
        with suppress(AttributeError, ValueError, OSError):  # no stream, a closed one or a broken pipe
            self._stream.write(text)
            self._stream.flush()


class _LocalTasks(Callback):
    """Counts the tasks of the computations of dask's local schedulers into a :class:`ProgressLine`.

    The callbacks run in the scheduler's thread and only count; a thread of its own redraws the line.
    """

    def __init__(self, line: ProgressLine):
        super().__init__()
        self._line = line
        self._done = self._total = 0
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="pixelflowsom-progress", daemon=True)

    def open(self) -> None:
        self.register()
        self._ticker.start()

    def settle(self) -> None:
        pass  # every computation ends its line before it returns

    def close(self, complete: bool) -> None:
        Callback.active.discard(self._callback)
        self._stop.set()
        self._ticker.join()
        self._line.end(complete)

    def _tick(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self._line.tick()

    def _start(self, dsk):
        self._done = self._total = 0
        self._line.begin()

    def _start_state(self, dsk, state):
        self._total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._line.update(0, self._total)

    def _posttask(self, key, result, dsk, state, worker_id):
        self._done += 1
        self._line.update(self._done, self._total)

    def _finish(self, dsk, state, errored):
        self._line.end(complete=not errored)


def _scheduler_report(client_id: str):
    """Return the function the scheduler's ``feed`` calls: the progress of what client ``client_id`` waits for.

    The function is defined here, inside a function, so that cloudpickle sends it by value: the scheduler needs no
    pixelflowsom. It reads the scheduler's documented state (``Scheduler.clients``, ``ClientState.wants_what``,
    ``TaskState.group``, ``TaskGroup.dependencies`` and ``TaskGroup.states``, which counts forgotten tasks too);
    distributed's public alternative, ``distributed.progress``, needs the futures of the computations, which
    ``dask.compute`` keeps to itself.
    """

    def pixelflowsom_progress(scheduler):
        client = scheduler.clients.get(client_id)
        wanted = {ts.group for ts in client.wants_what} if client is not None else set()
        groups, stack = set(wanted), list(wanted)
        while stack:
            for group in stack.pop().dependencies:
                if group not in groups:
                    groups.add(group)
                    stack.append(group)
        done = total = erred = 0
        for group in groups:
            states = group.states
            n = sum(states.values())
            total += n
            done += n - sum(states.get(s, 0) for s in ("waiting", "queued", "processing", "no-worker"))
            erred += states.get("erred", 0)
        return {"id": "\n".join(sorted(group.name for group in wanted)), "done": done, "total": total, "erred": erred}

    return pixelflowsom_progress


class _SchedulerFeed:
    """Feeds a :class:`ProgressLine` with what a dask.distributed scheduler reports about a client's computations.

    A thread of its own reads the scheduler's ``feed`` stream. A computation is identified by the task groups of the
    keys the client waits for; it ends when the client waits for other keys or none.
    """

    def __init__(self, client, line: ProgressLine):
        self._address = client.scheduler.address
        self._connection_args = client.connection_args
        self._client_id = client.id
        self._line = line
        self._lock = threading.Lock()
        self._current = None  # the computation shown
        self._settled = None  # the computation settle() ended (it may still be reported until the client lets go)
        self._erred = 0
        self._closing = threading.Event()
        self._loop = self._task = None
        self._thread = threading.Thread(target=self._run, name="pixelflowsom-progress", daemon=True)

    def open(self) -> None:
        self._thread.start()

    def settle(self) -> None:
        with self._lock:
            if self._current is not None:
                self._settled, self._current = self._current, None
                self._line.end(complete=True)

    def close(self, complete: bool) -> None:
        self._closing.set()
        loop, task = self._loop, self._task
        if loop is not None:
            with suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout=10)
        with self._lock:
            self._line.end(complete and not self._erred)
            self._current = None

    def _run(self) -> None:
        try:
            asyncio.run(self._listen())
        except asyncio.CancelledError:
            pass
        except Exception as error:  # noqa: BLE001 - the display must never fail the command; say why it stopped
            self._line.note(f"pixelflowsom: no progress from the dask scheduler ({type(error).__name__}: {error})")

    async def _listen(self) -> None:
        from distributed.comm import connect
        from distributed.protocol.pickle import dumps

        self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        if self._closing.is_set():
            return
        comm = await connect(self._address, **self._connection_args)
        try:
            function = dumps(_scheduler_report(self._client_id))
            await comm.write({"op": "feed", "function": function, "interval": INTERVAL_SECONDS})
            while True:
                self._report(await comm.read())
        finally:
            comm.abort()

    def _report(self, report: dict) -> None:
        with self._lock:
            computation = report["id"] or None
            if computation != self._current:
                if self._current is not None:
                    self._line.end(complete=not self._erred)
                    self._current = None
                if computation is not None and computation != self._settled:
                    self._current = computation
                    self._line.begin()
                if computation is None:
                    self._settled = None
            if self._current is not None:
                self._erred = report["erred"]
                self._line.update(report["done"], report["total"])
        self._line.tick()
