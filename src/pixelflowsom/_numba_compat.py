"""The one place where numba's internal (non-extension) API is used.

numba's public extension API (:mod:`numba.extending`: ``intrinsic``, ``register_model``, ``models``) lets the package
define its own types and LLVM intrinsics (:mod:`pixelflowsom._simd`), but the code generators it calls are handed
numba's target context, whose methods are internal; and the notice of a first compilation
(:mod:`pixelflowsom._progress`) listens to numba's event API, which lives in ``numba.core``. Both may change in any
numba release. Keeping them here means such a release breaks one file, not the package; each item names the public
API to switch to when there is one. What public llvmlite (:mod:`llvmlite.ir`) does, e.g. declaring an LLVM intrinsic
(``ir.Module.declare_intrinsic``), is done with it directly, not here.
"""

from __future__ import annotations

from contextlib import contextmanager

from numba.core import event


def array_data(context, builder, array_type, array):
    """Return the pointer to the first element of ``array``, the LLVM value of a numba array of type ``array_type``.

    For the code generator of an ``@intrinsic``: ``context.make_array(array_type)(context, builder, array).data``.
    No public API: numba documents an array's data model (a struct whose ``data`` member is the pointer) but no
    accessor for it; switch when :mod:`numba.extending` offers one.
    """
    return context.make_array(array_type)(context, builder, array).data


def none_value(context):
    """Return the LLVM value of ``None``: what the code generator of an ``@intrinsic`` returning ``types.none`` returns.

    ``context.get_dummy_value()``. No public API: the value of ``None`` follows numba's internal data model of
    ``types.none``; switch when :mod:`numba.extending` offers one.
    """
    return context.get_dummy_value()


@contextmanager
def on_compile_start(callback):
    """Within the block, call ``callback(dispatcher)`` whenever numba starts compiling a function, in this process.

    numba's event API (``numba.core.event``, documented in numba's developer reference, not among its public API): a
    :class:`numba.core.event.Listener` installed with :func:`numba.core.event.install_listener` for the
    ``"numba:compile"`` event kind. numba broadcasts the event from the thread that compiles, whichever it is (the
    listeners are process-wide), and only for a real compilation: a dispatcher that loads its kernel from the on-disk
    cache returns before the event (``Dispatcher.compile``). ``dispatcher`` is the event's ``data["dispatcher"]``
    (``None`` if it has none); its ``py_func`` is the function compiled. numba compiles under its global compiler
    lock: one call at a time. No public API: switch when numba makes its event API (or a compilation hook) public.
    """

    class Listener(event.Listener):
        def on_start(self, ev):
            callback(ev.data.get("dispatcher"))

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Listener()):
        yield


__all__ = ["array_data", "none_value", "on_compile_start"]
