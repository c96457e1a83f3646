"""Where a call spends its time: every phase is timed, logged to the ``"pixelflowsom"`` logger and announced.

The estimator, the drop-in and the command line time their phases (sampling, training the SOM, metaclustering,
building the ``flowsom.FlowSOM`` object, labelling and writing) with :func:`phase`, which

- logs one ``INFO`` record per phase that ends without an error: a message such as ``"train the SOM: 16.81 s"``,
  and the attributes ``phase`` (the name) and ``seconds``, which a handler can collect
  (``benchmarks/bench_paper.py`` does). Nothing is printed unless the application configures logging, e.g.
  ``logging.basicConfig(level=logging.INFO)``;
- records the phase as running while its block runs: :func:`current_phase` answers, in the calling thread (and
  asyncio task), which phase runs innermost;
- calls the listeners added with :func:`add_listener` with ``("start", name)`` when the phase starts and
  ``("end", name)`` when it ends, with an error or not (``pixelflowsom._progress`` labels its progress lines
  with them).

This module is the low layer: it imports nothing of the package.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

#: The logger of the package.
logger = logging.getLogger("pixelflowsom")

# The phases running in the current context, innermost last. A context variable rather than a module-level stack:
# every thread (and asyncio task) has its own, so phases run at once in two threads neither mix nor unbalance
# each other. The tuple is replaced, never changed in place.
_running: ContextVar[tuple[str, ...]] = ContextVar("pixelflowsom_phases", default=())

# Called with ("start" | "end", name) by phase(), in the thread running the phase; see add_listener.
_listeners: list[Callable[[str, str], None]] = []


def current_phase() -> str | None:
    """Return the name of the innermost :func:`phase` running in the calling thread (or asyncio task), or None."""
    running = _running.get()
    return running[-1] if running else None


def add_listener(listener: Callable[[str, str], None]) -> None:
    """Call ``listener("start", name)`` whenever a :func:`phase` starts and ``listener("end", name)`` when it ends.

    The listener is called in the thread that runs the phase, before its block starts and after it ends (with an
    error or not); it must be quick and must not raise. Remove it with :func:`remove_listener`.

    Parameters
    ----------
    listener
        A callable taking the event (``"start"`` or ``"end"``) and the phase's name.
    """
    _listeners.append(listener)


def remove_listener(listener: Callable[[str, str], None]) -> None:
    """Stop calling ``listener`` (added with :func:`add_listener`); nothing happens if it is not there."""
    try:
        _listeners.remove(listener)
    except ValueError:
        pass


@contextmanager
def phase(name: str):
    """Time the block and log it as the phase ``name`` (at ``INFO``, when it ends without an error).

    While the block runs, :func:`current_phase` returns ``name`` (unless a phase nested in it runs); the listeners
    (:func:`add_listener`) are told when it starts and ends.

    Parameters
    ----------
    name
        What the block does, e.g. ``"sample the training pixels"``.
    """
    outer = _running.get()
    _running.set((*outer, name))
    for listener in tuple(_listeners):
        listener("start", name)
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        _running.set(outer)
        for listener in tuple(_listeners):
            listener("end", name)
    logger.info("%s: %.2f s", name, seconds, extra={"phase": name, "seconds": seconds})
