"""The one place where dask.distributed internals are used: the progress of a client's computations, from its scheduler.

:func:`client_progress` opens a connection of its own to the scheduler and asks it, with the scheduler's ``feed``
operation (what ``distributed.diagnostics.progressbar`` uses), to report every ``interval`` seconds how many tasks of
the computations a client waits for are done. That needs distributed's comm layer (``distributed.comm.connect``), its
pickling (``distributed.protocol.pickle.dumps``), the ``feed`` message and the scheduler's state the reporting function
reads; none of it is public API. Keeping it here means a distributed release that changes it breaks one file, not the
package. Public alternative: ``distributed.progress`` (or ``distributed.diagnostics.progressbar``) needs the futures of
the computations, which ``dask.compute`` keeps to itself; switch to it if distributed can report on a client's
computations without them.
"""

from __future__ import annotations

from contextlib import aclosing

__all__ = ["client_progress"]


def _client_report(client_id: str):
    """Return the function the scheduler's ``feed`` calls: the progress of what client ``client_id`` waits for.

    The function is defined here, inside a function, so that cloudpickle sends it by value: the scheduler needs no
    pixelflowsom. It reads the scheduler's state (``Scheduler.clients``, ``ClientState.wants_what``,
    ``TaskState.group``, ``TaskGroup.dependencies`` and ``TaskGroup.states``, which counts forgotten tasks too).
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


async def _feed(address: str, connection_args: dict, function, interval: float):
    """Yield what the scheduler at ``address`` returns from ``function(scheduler)``, every ``interval`` seconds.

    The connection is closed (aborted) when the generator is closed, also when the task reading it is cancelled.
    """
    from distributed.comm import connect
    from distributed.protocol.pickle import dumps

    comm = await connect(address, **connection_args)
    try:
        await comm.write({"op": "feed", "function": dumps(function), "interval": interval})
        while True:
            yield await comm.read()
    finally:
        comm.abort()


def client_progress(address: str, connection_args: dict, client_id: str, interval: float):
    """Return an async context manager yielding the scheduler's reports about the computations of a client.

    Parameters
    ----------
    address : str
        The scheduler's address (``client.scheduler.address``).
    connection_args : dict
        The client's connection arguments (``client.connection_args``: security, timeouts).
    client_id : str
        The client's id (``client.id``).
    interval : float
        Seconds between two reports.

    Returns
    -------
    contextlib.aclosing
        ``async with client_progress(...) as reports: async for report in reports: ...``; every report is a dict with
        ``"id"`` (the names of the task groups of the keys the client waits for, one a line, sorted: ``""`` when it
        waits for none), and ``"done"``, ``"total"`` and ``"erred"``, the numbers of tasks of those groups and of the
        groups they depend on that are done, that there are, and that erred. Leaving the block closes the connection.
    """
    return aclosing(_feed(address, connection_args, _client_report(client_id), interval))
