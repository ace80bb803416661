"""Explicit SIMD vectors for numba kernels: a vector type held in registers and five intrinsics over it.

numba vectorises only innermost loops, and reloads accumulators it cannot prove unaliased; a value of type
``Vector(dtype, lanes)`` is one LLVM ``<lanes x dtype>`` SSA value, so a kernel that keeps a few of them in local
variables keeps them in registers (one zmm for 16 float32 lanes with AVX-512, two ymm with AVX2).

* ``load(array, start, lanes)``: ``array[start:start + lanes]`` of a 1-D C-contiguous array, as a vector
* ``store(array, start, vector)``: ``array[start:start + lanes] = vector``
* ``splat(value, lanes)``: ``value`` in every lane
* ``zeros(array, lanes)``: zero in every lane, of the array's dtype
* ``multiply_add(a, b, c)``: ``a * b + c`` lane by lane (LLVM ``fmuladd``: fused where the CPU has FMA)
* ``lane(vector, index)``: one lane, a scalar
* ``count(lanes)``: the lane count as an integer constant

``lanes`` is a compile-time count: an integer literal in the kernel's source, or a :class:`Lanes` argument
(its count is part of the argument's numba type, so each count compiles, and caches, its own kernel).
Loads and stores are unaligned; like numba's own indexing they are bounds-checked (``IndexError``) only when
numba's bounds checks are on (``NUMBA_BOUNDSCHECK=1``), otherwise callers must index inside the array.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import NativeValue, intrinsic, models, register_model, typeof_impl, unbox


class Vector(types.Type):
    """numba type of a ``<lanes x dtype>`` SIMD register value."""

    def __init__(self, dtype, lanes: int):
        self.dtype, self.lanes = dtype, lanes
        super().__init__(name=f"Vector({dtype}, {lanes})")


@register_model(Vector)
class VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


class Lanes:
    """A vector width to pass to a kernel: ``Lanes(16)`` is typed ``LanesType(16)``, a compile-time constant."""

    def __init__(self, count: int):
        self.count = count


class LanesType(types.Type):
    def __init__(self, count: int):
        self.count = count
        super().__init__(name=f"Lanes({count})")


@typeof_impl.register(Lanes)
def _typeof_lanes(value, context):
    return LanesType(value.count)


register_model(LanesType)(models.OpaqueModel)


@unbox(LanesType)
def _unbox_lanes(typ, obj, c):
    return NativeValue(c.context.get_constant_null(typ))


def _count(lanes):
    """The lane count of a ``LanesType`` or integer-literal argument; None (decline the typing) otherwise."""
    if isinstance(lanes, LanesType):
        return lanes.count
    if isinstance(lanes, types.IntegerLiteral):
        return lanes.literal_value
    return None


def _element_pointer(context, builder, array_type, array, start, vector_type):
    """Pointer to ``array[start]`` as a vector pointer; checks ``0 <= start <= size - lanes`` under boundscheck."""
    view = context.make_array(array_type)(context, builder, array)
    if context.enable_boundscheck:
        size = builder.extract_value(view.shape, 0)
        last = builder.add(start, ir.Constant(start.type, vector_type.count))
        outside = builder.or_(builder.icmp_signed("<", start, ir.Constant(start.type, 0)),
                              builder.icmp_signed(">", last, size))
        with builder.if_then(outside, likely=False):
            context.call_conv.return_user_exc(builder, IndexError, ("vector access outside the array",))
    return builder.bitcast(builder.gep(view.data, [start]), vector_type.as_pointer())


@intrinsic
def load(typingctx, array, start, lanes):
    if _count(lanes) is None:
        return None
    vector = Vector(array.dtype, _count(lanes))

    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], vector_type)
        return builder.load(pointer, align=context.get_abi_sizeof(context.get_value_type(array.dtype)))

    return vector(array, start, lanes), codegen


@intrinsic
def store(typingctx, array, start, vector):
    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], vector_type)
        builder.store(args[2], pointer, align=context.get_abi_sizeof(context.get_value_type(array.dtype)))
        return context.get_dummy_value()

    return types.none(array, start, vector), codegen


@intrinsic
def splat(typingctx, value, lanes):
    if _count(lanes) is None:
        return None
    vector = Vector(value, _count(lanes))

    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(vector)
        single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(single, single, ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), None))

    return vector(value, lanes), codegen


@intrinsic
def zeros(typingctx, array, lanes):
    if _count(lanes) is None:
        return None
    vector = Vector(array.dtype, _count(lanes))

    def codegen(context, builder, signature, args):
        return ir.Constant(context.get_value_type(vector), None)

    return vector(array, lanes), codegen


@intrinsic
def multiply_add(typingctx, a, b, c):
    def codegen(context, builder, signature, args):
        vector_type = context.get_value_type(a)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
            f"llvm.fmuladd.v{a.lanes}f{a.dtype.bitwidth}")
        return builder.call(function, args)

    return a(a, b, c), codegen


@intrinsic
def lane(typingctx, vector, index):
    def codegen(context, builder, signature, args):
        return builder.extract_element(args[0], builder.trunc(args[1], ir.IntType(32)))

    return vector.dtype(vector, index), codegen


@intrinsic
def count(typingctx, lanes):
    if _count(lanes) is None:
        return None

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, _count(lanes))

    return types.intp(lanes), codegen
