"""Sixteen-lane float32 vectors for numba kernels: a numba type, and intrinsics that load, store and compute with it.

numba vectorises only innermost loops, and keeps arrays in memory. A kernel that must keep many lanes of work in
registers across an inner loop (the online SOM's distances: 16 nodes per vector, several vectors summed over the
channels) writes that loop over :data:`float32x16` values instead: each value is one LLVM ``<16 x float>`` (one
AVX-512 register, two AVX2 registers, four SSE registers: LLVM splits it for the machine), and each intrinsic is one
LLVM instruction on it, or a few (:func:`where_within`, :func:`flush_subnormal`). The arithmetic is IEEE float32,
lane by lane, exactly as the scalar operations (:func:`flush_subnormal` replaces magnitudes below the smallest normal
float32 by 0, the online SOM's rule), so results do not depend on the machine, but for one: :func:`muladd`.

:func:`muladd` computes ``a * b + c`` as fast as the target machine can (LLVM's ``llvm.fmuladd``): on a target with a
fused multiply-add instruction (x86-64 with FMA: Haswell and later, Zen; AArch64) it is one fused multiply-add, rounded
once; on a target without (numba's ``NUMBA_CPU_NAME=generic``, x86-64 with SSE2 only, which shares compiled caches
between machines) it is a multiplication then an addition, rounded twice. The correctly rounded fused multiply-add
(``llvm.fma``) is no option there: LLVM makes each of its lanes a call of the C library's ``fmaf``, sixteen calls per
vector, which made the online SOM 13 times slower (10.2 s instead of 0.76 s on 400k x 20 pixels). So a sum of
products computed with it may differ in the last bit between the two kinds of targets; :func:`fused` tells which one
the kernels of this process are compiled for. numba keys its on-disk cache on the target (LLVM triple, CPU name and
features): kernels compiled for one target are never loaded for another. (A ``NUMBA_CPU_NAME`` other than ``generic``
keeps the host's features, FMA and AVX-512 included, unless ``NUMBA_CPU_FEATURES`` is set too: empty, it takes the
named processor's own.)

:func:`prefetch` is a cache hint for the scalar data the vectors are computed from. Nothing here checks bounds:
:func:`load` and :func:`store` touch ``array[index:index + LANES]``, which the calling kernel must have checked lies
inside ``array`` (a 1-d C-contiguous float32 array); :func:`prefetch` never faults.
"""

from __future__ import annotations

from functools import cache

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic, models, register_model

from ._numba_compat import array_data, none_value

#: Lanes of a :data:`float32x16` value.
LANES = 16

_VECTOR = ir.VectorType(ir.FloatType(), LANES)


class Float32x16Type(types.Type):
    """numba type of a vector of :data:`LANES` float32 values, held in registers."""

    def __init__(self):
        super().__init__(name="float32x16")


#: The numba type of a vector value (the type the intrinsics take and return).
float32x16 = Float32x16Type()


@register_model(Float32x16Type)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _is_float32_vector_array(array):
    return isinstance(array, types.Array) and array.ndim == 1 and array.dtype == types.float32 and array.layout == "C"


def _declare(module, function_type, name):
    """Return the LLVM function ``name`` of ``function_type`` in ``module``, declared there unless it is already."""
    return module.declare_intrinsic(name, fnty=function_type)


def _vector_pointer(context, builder, array_type, array, index):
    """Return the ``<16 x float>*`` pointer to ``array[index]`` (``index``: ``intp``, the signatures convert to it)."""
    return builder.bitcast(builder.gep(array_data(context, builder, array_type, array), [index]), _VECTOR.as_pointer())


@intrinsic
def load(typingctx, array, index):
    """Load ``array[index:index + LANES]`` as a vector (``array``: 1-d C-contiguous float32; no bounds check)."""
    if not (_is_float32_vector_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(pointer, align=4)

    return float32x16(array, types.intp), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """Write ``vector`` to ``array[index:index + LANES]`` (``array``: 1-d C-contiguous float32; no bounds check)."""
    if not (_is_float32_vector_array(array) and isinstance(index, types.Integer) and vector == float32x16):
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=4)
        return none_value(context)

    return types.none(array, types.intp, vector), codegen


def _lanes(indices):
    return ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(indices))


def _splat(builder, value):
    first = builder.insert_element(ir.Constant(_VECTOR, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(_VECTOR, ir.Undefined), _lanes([0] * LANES))


@intrinsic
def splat(typingctx, value):
    """Broadcast the float32 ``value`` to every lane of a vector."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, args[0])

    return float32x16(value), codegen


def _binary(instruction, doc):
    def typer(typingctx, a, b):
        if not (a == float32x16 and b == float32x16):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, instruction)(args[0], args[1])

        return float32x16(a, b), codegen

    typer.__name__ = typer.__qualname__ = instruction
    typer.__doc__ = doc
    return intrinsic(typer)


sub = _binary("fsub", "Compute ``a - b`` lane by lane, rounded to float32.")
mul = _binary("fmul", "Compute ``a * b`` lane by lane, rounded to float32.")
add = _binary("fadd", "Compute ``a + b`` lane by lane, rounded to float32.")


@intrinsic
def muladd(typingctx, a, b, c):
    """Compute ``a * b + c`` lane by lane: fused and rounded once where the target has a fused multiply-add.

    LLVM's ``llvm.fmuladd``: one fused multiply-add instruction where the target machine has one (:func:`fused` is
    ``True``), else a multiplication and an addition, each rounded to float32 (``fused()`` is ``False``); never a call.
    """
    if not (a == float32x16 and b == float32x16 and c == float32x16):
        return None

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR])
        return builder.call(_declare(builder.module, function_type, f"llvm.fmuladd.v{LANES}f32"), args)

    return float32x16(a, b, c), codegen


#: The probe of :func:`fused`: ``d = 1 + 2**-12`` and ``c = -(1 + 2**-11)``. ``d * d`` is ``1 + 2**-11 + 2**-24``,
#: exactly halfway between two float32, and rounds to even, to ``-c``: ``d * d + c`` is ``2**-24`` fused, 0 unfused.
_PROBE = np.repeat(np.array([1 + 2.0**-12, -(1 + 2.0**-11)], np.float32), LANES)


@njit(cache=True, nogil=True)
def _muladd_probe(values, out):
    """``muladd(d, d, c)`` into ``out[:LANES]``, ``d`` and ``c`` read from ``values`` (at run time: nothing folds)."""
    d = load(values, 0)
    store(out, 0, muladd(d, d, load(values, LANES)))


@cache
def fused() -> bool:
    """Whether :func:`muladd` is a fused multiply-add in the kernels this process compiles (or loads from its cache).

    Computed once per process by running :func:`muladd` on values where the fused and the unfused results differ,
    compiled as every kernel is, for numba's target (the machine's processor, or ``NUMBA_CPU_NAME`` and
    ``NUMBA_CPU_FEATURES`` where set).

    Returns
    -------
    bool
        ``True``: each ``a * b + c`` is rounded once (the target has a fused multiply-add, e.g. x86-64 with FMA);
        ``False``: the product and the sum are rounded to float32 one after the other (e.g. ``NUMBA_CPU_NAME=generic``).
    """
    out = np.full(LANES, np.nan, np.float32)
    _muladd_probe(_PROBE, out)
    if not (np.all(out == 2.0**-24) or np.all(out == 0.0)):
        raise RuntimeError(f"llvm.fmuladd computed {out}, neither fused (2**-24) nor unfused (0) in every lane.")
    return bool(out[0] != 0.0)


@njit(nogil=True)  # not cached: vector_bits reads the assembly of its compilation
def _width_probe(values, out):
    """``values[:LANES] + values[LANES:2 * LANES]`` into ``out[:LANES]``: one vector addition, for its assembly."""
    store(out, 0, add(load(values, 0), load(values, LANES)))


@cache
def vector_bits() -> int:
    """Width in bits of the machine registers a :data:`float32x16` value is held in, by the kernels of this process.

    512 (one AVX-512 register), 256 (two AVX registers) or 128 (four SSE registers; also any other machine). Read
    from the assembly of a one-addition kernel compiled for numba's target, as every kernel is (numba's public
    ``Dispatcher.inspect_asm``), once per process. Kernels that keep many vectors in registers across a loop take
    fewer at a time on narrower registers, where the registers run out (16 AVX or SSE registers, 32 AVX-512 ones).

    Returns
    -------
    int
        512, 256 or 128.
    """
    signature = (types.float32[::1], types.float32[::1])
    _width_probe.compile(signature)
    assembly = _width_probe.inspect_asm(signature)
    return 512 if "zmm" in assembly else 256 if "ymm" in assembly else 128


@intrinsic
def where_within(typingctx, vector, low, high, inside):
    """Take ``inside`` in the lanes where ``low <= vector < high`` (float32 bounds), ``0.0`` in the others."""
    if not (vector == float32x16 and low == types.float32 and high == types.float32 and inside == float32x16):
        return None

    def codegen(context, builder, signature, args):
        above = builder.fcmp_ordered(">=", args[0], _splat(builder, args[1]))
        below = builder.fcmp_ordered("<", args[0], _splat(builder, args[2]))
        return builder.select(builder.and_(above, below), args[3], ir.Constant(_VECTOR, [0.0] * LANES))

    return float32x16(vector, low, high, inside), codegen


#: The smallest normal float32, ``2**-126`` (``numpy.finfo(numpy.float32).tiny``); magnitudes below it are subnormal.
TINY = 2.0**-126
_EXPONENT_BITS = 0x7F800000  # of a float32: all zero in 0, -0.0 and the subnormals, and only there


@intrinsic
def flush_subnormal(typingctx, vector):
    """Replace the lanes whose magnitude is below :data:`TINY` (the subnormals, and ``-0.0``) by ``+0.0``.

    ``select(fabs(v) < TINY, 0, v)``, computed as ``select((bits(v) & exponent bits) == 0, 0, v)`` (the same lanes;
    NaN and infinities are kept): an integer test and a select, which AVX-512 does in two instructions (a ``vptestmd``
    and a zeroing move; the float comparison would take a third, the ``fabs``). Many x86 processors compute with
    subnormal operands or results in microcode, many times more slowly: the online SOM flushes every code it writes
    (see :mod:`pixelflowsom._som`).
    """
    if vector != float32x16:
        return None

    def codegen(context, builder, signature, args):
        integers = ir.VectorType(ir.IntType(32), LANES)
        exponent = builder.and_(builder.bitcast(args[0], integers), ir.Constant(integers, [_EXPONENT_BITS] * LANES))
        below = builder.icmp_unsigned("==", exponent, ir.Constant(integers, [0] * LANES))
        return builder.select(below, ir.Constant(_VECTOR, [0.0] * LANES), args[0])

    return float32x16(vector), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the processor to bring ``array[index]`` into cache (``array``: 1-d C-contiguous float32; never faults)."""
    if not (_is_float32_vector_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = array_data(context, builder, signature.args[0], args[0])
        pointer = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        function = _declare(builder.module, function_type, "llvm.prefetch.p0i8")
        # read, keep in all cache levels, data cache
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return none_value(context)

    return types.none(array, types.intp), codegen
