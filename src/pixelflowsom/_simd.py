"""Sixteen-lane float32 vectors for numba kernels: a numba type, and intrinsics that load, store and compute with it.

numba vectorises only innermost loops, and keeps arrays in memory. A kernel that must keep many lanes of work in
registers across an inner loop (the online SOM's distances: 16 nodes per vector, several vectors summed over the
channels) writes that loop over :data:`float32x16` values instead: each value is one LLVM ``<16 x float>`` (one
AVX-512 register, two AVX2 registers, four SSE registers: LLVM splits it for the machine), and each intrinsic is one
LLVM instruction on it, or a few (:func:`where_within`, :func:`flush_subnormal`). The arithmetic is IEEE float32,
lane by lane, exactly as the scalar operations (``fma`` is the correctly rounded fused multiply-add;
:func:`flush_subnormal` replaces magnitudes below the smallest normal float32 by 0, the online SOM's rule), so results
do not depend on the machine. :func:`prefetch` is a cache hint for the scalar data the vectors are computed from.

Nothing here checks bounds: :func:`load` and :func:`store` touch ``array[index:index + LANES]``, which the calling
kernel must have checked lies inside ``array`` (a 1-d C-contiguous float32 array); :func:`prefetch` never faults.
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

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


def _vector_pointer(context, builder, array_type, array, index, index_type):
    data = context.make_array(array_type)(context, builder, array).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.bitcast(builder.gep(data, [offset]), _VECTOR.as_pointer())


@intrinsic
def load(typingctx, array, index):
    """Load ``array[index:index + LANES]`` as a vector (``array``: 1-d C-contiguous float32; no bounds check)."""
    if not (_is_float32_vector_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        return builder.load(pointer, align=4)

    return float32x16(array, index), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """Write ``vector`` to ``array[index:index + LANES]`` (``array``: 1-d C-contiguous float32; no bounds check)."""
    if not (_is_float32_vector_array(array) and isinstance(index, types.Integer) and vector == float32x16):
        return None

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])
        builder.store(args[2], pointer, align=4)
        return context.get_dummy_value()

    return types.none(array, index, vector), codegen


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
def fma(typingctx, a, b, c):
    """Compute ``a * b + c`` lane by lane, rounded once to float32 (the fused multiply-add, LLVM's ``llvm.fma``)."""
    if not (a == float32x16 and b == float32x16 and c == float32x16):
        return None

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR, _VECTOR, _VECTOR])
        function = cgutils.get_or_insert_function(builder.module, function_type, f"llvm.fma.v{LANES}f32")
        return builder.call(function, args)

    return float32x16(a, b, c), codegen


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
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        offset = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.bitcast(builder.gep(data, [offset]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function_type = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0i8")
        # read, keep in all cache levels, data cache
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen
