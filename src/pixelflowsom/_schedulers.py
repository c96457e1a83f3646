"""Which dask scheduler a computation will run on, found without importing dask.distributed when no client can exist.

``dask.compute`` without a configured scheduler looks for a ``distributed.Client`` and so imports
``dask.distributed`` (0.2 s in a fresh process), as does any scheduler given by name. Where dask's config names no
scheduler and ``distributed`` was never imported, no client can exist: :func:`active_scheduler` then says so without
the import, and :data:`THREADS` (dask's threaded ``get``, a callable that dask uses as it is) runs the computation.
"""

from __future__ import annotations

import sys

import dask
import dask.threaded

#: dask's threaded scheduler, passed to ``dask.compute(..., scheduler=THREADS)``.
THREADS = dask.threaded.get


def active_scheduler():
    """Return the ``get`` function of the scheduler ``dask.compute`` would use now, or None for dask's default.

    None means no scheduler is configured and no ``distributed.Client`` is active: dask would use its threaded
    scheduler for arrays and delayed values. Otherwise as :func:`dask.base.get_scheduler` (a client's ``get``, or
    the named scheduler's).
    """
    from dask.base import get_scheduler

    if dask.config.get("scheduler", None) is None and "distributed" not in sys.modules:
        return None
    return get_scheduler()


def in_process(scheduler) -> bool:
    """Tell whether ``scheduler`` (from :func:`active_scheduler`) runs tasks in this process: threads or synchronous."""
    import dask.local

    return scheduler in (None, THREADS, dask.local.get_sync)


def distributed_client(scheduler):
    """Return the ``distributed.Client`` whose ``get`` is ``scheduler`` (from :func:`active_scheduler`), or None."""
    client = getattr(scheduler, "__self__", None)
    if client is None:
        return None
    from distributed import Client

    return client if isinstance(client, Client) else None
