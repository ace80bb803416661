"""Explicit SIMD vectors for numba kernels: a vector type held in registers and a few intrinsics over it.

numba vectorises only innermost loops, and reloads accumulators it cannot prove unaliased; a value of type
``Vector(dtype, lanes)`` is one LLVM ``<lanes x dtype>`` SSA value, so a kernel that keeps a few of them in local
variables keeps them in registers (one zmm for 16 float32 lanes with AVX-512, two ymm with AVX2).

* ``load(array, start, lanes)``: ``array[start:start + lanes]`` of a 1-D C-contiguous array, as a vector
* ``load_range(array, start, first, stop, lanes)``: lane ``l`` is ``array[start + l]`` for ``first <= l < stop``,
  zero for the other lanes, which are not read (a masked load: ``start + l`` may lie outside the array there)
* ``store(array, start, vector)``: ``array[start:start + lanes] = vector``
* ``store_first(array, start, vector, count)``: ``array[start:start + count] = vector[:count]`` (a masked store)
* ``splat(value, lanes)``: ``value`` in every lane
* ``zeros(array, lanes)``: zero in every lane, of the array's dtype
* ``multiply_add(a, b, c)``: ``a * b + c`` lane by lane (LLVM ``fmuladd``: fused where the CPU has FMA)
* ``lane(vector, index)``: one lane, a scalar
* ``count(lanes)``: the lane count as an integer constant
* ``lanes_of(count)``: the ``Lanes`` value of an integer literal, inside a kernel (a ``cfunc`` has no ``Lanes``
  argument)
* ``prefetch(array, start)``: a hint to bring the cache line of ``array[start]`` closer (never faults, so ``start``
  may lie outside the array; not bounds-checked)
* ``load_columns``, ``store_columns``: four columns of channels to four channel vectors and back
* ``copy_transposed``: ``lanes`` columns of ``lanes`` channels to ``lanes`` channel vectors, stored consecutively
* ``even_odd(a, b)``: the even and the odd lanes of ``a`` followed by ``b`` (a stride-2 split, shuffled in registers)
* ``store_sums(array, start, a0, a1, a2, a3)``: the four vectors' lane sums to 4 consecutive values

``lanes`` is a compile-time count: an integer literal in the kernel's source, or a :class:`Lanes` argument
(its count is part of the argument's numba type, so each count compiles, and caches, its own kernel).
Loads and stores are unaligned; like numba's own indexing they are bounds-checked (``IndexError``) only when
numba's bounds checks are on (``NUMBA_BOUNDSCHECK=1``), otherwise callers must index inside the array.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import NativeValue, intrinsic, models, register_model, unbox


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


class LanesType(types.Type):
    def __init__(self, count: int):
        self.count = count
        super().__init__(name=f"Lanes({count})")


class Lanes:
    """A vector width to pass to a kernel: ``Lanes(16)`` is typed ``LanesType(16)``, a compile-time constant.

    One object per count, carrying its numba type as ``_numba_type_``, which numba's dispatcher reads without a
    Python-level ``typeof`` (under 1 us per call instead of about 6)."""

    _interned: dict[int, Lanes] = {}

    def __new__(cls, count: int):
        lanes = cls._interned.get(count)
        if lanes is None:
            lanes = cls._interned[count] = super().__new__(cls)
            lanes.count, lanes._numba_type_ = count, LanesType(count)
        return lanes


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


def _element_pointer(context, builder, array_type, array, start, vector_type, view=None):
    """Pointer to ``array[start]`` as a vector pointer; checks ``0 <= start <= size - lanes`` under boundscheck."""
    view = view or context.make_array(array_type)(context, builder, array)
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


def _lane_mask(builder, lanes, first, stop):
    """``<lanes x i1>``: lane ``l`` set where ``first <= l < stop`` (integers of one type; compared as i32 after
    clamping to ``[-1, lanes]``, so that a 16-lane mask is one compare of 32-bit lanes)."""
    int32 = ir.IntType(32)
    index_type = ir.VectorType(int32, lanes)
    splat_mask = ir.Constant(ir.VectorType(int32, lanes), None)

    def splat_value(value):
        low, high = ir.Constant(value.type, -1), ir.Constant(value.type, lanes)
        value = builder.select(builder.icmp_signed("<", value, low), low, value)
        value = builder.trunc(builder.select(builder.icmp_signed(">", value, high), high, value), int32)
        single = builder.insert_element(ir.Constant(index_type, ir.Undefined), value, ir.Constant(int32, 0))
        return builder.shuffle_vector(single, single, splat_mask)

    indices = ir.Constant(index_type, list(range(lanes)))
    return builder.and_(builder.icmp_signed("<=", splat_value(first), indices),
                        builder.icmp_signed("<", indices, splat_value(stop)))


def _check_range(context, builder, view, first, stop):
    """Under boundscheck: IndexError unless ``[first, stop)`` is empty or inside the array ``view``."""
    if not context.enable_boundscheck:
        return
    size = builder.extract_value(view.shape, 0)
    outside = builder.and_(builder.icmp_signed("<", first, stop),
                           builder.or_(builder.icmp_signed("<", first, ir.Constant(first.type, 0)),
                                       builder.icmp_signed(">", stop, size)))
    with builder.if_then(outside, likely=False):
        context.call_conv.return_user_exc(builder, IndexError, ("vector access outside the array",))


def _masked_function(builder, operation, vector, vector_type):
    """LLVM's ``masked.load`` or ``masked.store`` intrinsic for the :class:`Vector` type ``vector`` (LLVM type
    ``vector_type``)."""
    suffix = f"v{vector.lanes}f{vector.dtype.bitwidth}"
    mask_type, pointer_type = ir.VectorType(ir.IntType(1), vector_type.count), vector_type.as_pointer()
    if operation == "load":
        signature = ir.FunctionType(vector_type, [pointer_type, ir.IntType(32), mask_type, vector_type])
    else:
        signature = ir.FunctionType(ir.VoidType(), [vector_type, pointer_type, ir.IntType(32), mask_type])
    return cgutils.get_or_insert_function(builder.module, signature, f"llvm.masked.{operation}.{suffix}.p0{suffix}")


@intrinsic
def load_range(typingctx, array, start, first, stop, lanes):
    """Lane ``l`` is ``array[start + l]`` for ``first <= l < stop``, zero for the other lanes (LLVM ``masked.load``:
    nothing outside ``[start + max(first, 0), start + min(stop, lanes))`` is read, so that range alone must lie in the
    array)."""
    if _count(lanes) is None or not all(isinstance(value, types.Integer) for value in (start, first, stop)):
        return None
    vector = Vector(array.dtype, _count(lanes))

    def codegen(context, builder, signature, args):
        source, start_value = args[0], args[1]
        first_value, stop_value = (context.cast(builder, value, kind, types.intp)
                                   for value, kind in zip(args[2:4], signature.args[2:4]))
        start_value = context.cast(builder, start_value, signature.args[1], types.intp)
        vector_type = context.get_value_type(vector)
        view = context.make_array(signature.args[0])(context, builder, source)
        zero, count = ir.Constant(first_value.type, 0), ir.Constant(stop_value.type, vector.lanes)
        low = builder.select(builder.icmp_signed("<", first_value, zero), zero, first_value)  # the lanes read
        high = builder.select(builder.icmp_signed(">", stop_value, count), count, stop_value)
        _check_range(context, builder, view, builder.add(start_value, low), builder.add(start_value, high))
        pointer = builder.bitcast(builder.gep(view.data, [start_value]), vector_type.as_pointer())
        align = ir.Constant(ir.IntType(32), context.get_abi_sizeof(vector_type.element))
        return builder.call(_masked_function(builder, "load", vector, vector_type),
                            [pointer, align, _lane_mask(builder, vector.lanes, first_value, stop_value),
                             ir.Constant(vector_type, None)])

    return vector(array, start, first, stop, lanes), codegen


@intrinsic
def store_first(typingctx, array, start, vector, count):
    """``array[start + l] = vector[l]`` for lanes ``l < count`` (LLVM ``masked.store``: nothing written outside
    ``[start, start + count)``, so that range alone must lie in the array)."""
    if not (isinstance(vector, Vector) and isinstance(start, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        target, value = args[0], args[2]
        start_value, count_value = (context.cast(builder, value, kind, types.intp)
                                    for value, kind in ((args[1], signature.args[1]), (args[3], signature.args[3])))
        vector_type = context.get_value_type(vector)
        view = context.make_array(signature.args[0])(context, builder, target)
        _check_range(context, builder, view, start_value, builder.add(start_value, count_value))
        pointer = builder.bitcast(builder.gep(view.data, [start_value]), vector_type.as_pointer())
        align = ir.Constant(ir.IntType(32), context.get_abi_sizeof(vector_type.element))
        mask = _lane_mask(builder, vector.lanes, ir.Constant(count_value.type, 0), count_value)
        builder.call(_masked_function(builder, "store", vector, vector_type), [value, pointer, align, mask])
        return context.get_dummy_value()

    return types.none(array, start, vector, count), codegen


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
def lanes_of(typingctx, count):
    if not isinstance(count, types.IntegerLiteral):
        return None
    lanes = LanesType(count.literal_value)

    def codegen(context, builder, signature, args):
        return context.get_constant_null(lanes)

    return lanes(count), codegen


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


def _quad_type(context, vector):
    return ir.VectorType(context.get_value_type(vector.dtype), 4)


def _load_rows(context, builder, array_type, array, start, step, count, size, vector_type):
    """``size`` vectors of type ``vector_type``: vector ``l`` loaded from ``array[start + l*step:]`` for ``l < count``
    (``count >= 1``), zero for ``l >= count`` (those re-read row ``count - 1``, then drop it: no branch)."""
    view = context.make_array(array_type)(context, builder, array)
    zero = ir.Constant(vector_type, None)
    last = builder.sub(count, ir.Constant(count.type, 1))
    rows = []
    for lane in range(size):
        lane_value = ir.Constant(count.type, lane)
        inside = builder.icmp_signed("<", lane_value, count)
        offset = builder.add(start, builder.mul(step, builder.select(inside, lane_value, last)))
        pointer = _element_pointer(context, builder, array_type, array, offset, vector_type, view)
        loaded = builder.load(pointer, align=context.get_abi_sizeof(vector_type.element))
        rows.append(builder.select(inside, loaded, zero))
    return rows


@intrinsic
def store_columns(typingctx, array, start, step, count, a0, a1, a2, a3):
    """``array[start + l*step + p] = a_p[l]`` for lanes ``l < count`` and ``p < 4``: four vectors of channels
    written as ``count`` runs of 4 consecutive values (a transpose, shuffled in registers)."""
    if not (isinstance(a0, Vector) and a0 == a1 == a2 == a3):
        return None
    lanes = a0.lanes

    def codegen(context, builder, signature, args):
        target, start_value, step_value, count_value = args[:4]
        vectors = args[4:]
        first = builder.shuffle_vector(vectors[0], vectors[1], ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes),
                                                                           list(range(2 * lanes))))
        second = builder.shuffle_vector(vectors[2], vectors[3], ir.Constant(ir.VectorType(ir.IntType(32), 2 * lanes),
                                                                            list(range(2 * lanes))))
        quad = _quad_type(context, a0)
        view = context.make_array(signature.args[0])(context, builder, target)
        for lane in range(lanes):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 4), [position * lanes + lane for position in range(4)])
            column = builder.shuffle_vector(first, second, mask)
            inside = builder.icmp_signed("<", ir.Constant(count_value.type, lane), count_value)
            with builder.if_then(inside, likely=True):
                offset = builder.add(start_value, builder.mul(step_value, ir.Constant(step_value.type, lane)))
                pointer = _element_pointer(context, builder, signature.args[0], target, offset, quad, view)
                builder.store(column, pointer, align=context.get_abi_sizeof(quad.element))
        return context.get_dummy_value()

    return types.none(array, start, step, count, a0, a1, a2, a3), codegen


@intrinsic
def load_columns(typingctx, array, start, step, count, lanes):
    """Four vectors: lane ``l`` of vector ``p`` is ``array[start + l*step + p]`` for ``l < count`` (``count >= 1``),
    zero for ``l >= count``; the inverse of :func:`store_columns`."""
    if _count(lanes) is None:
        return None
    size = _count(lanes)
    vector = Vector(array.dtype, size)
    result_type = types.UniTuple(vector, 4)

    def codegen(context, builder, signature, args):
        columns = _load_rows(context, builder, signature.args[0], *args[:4], size, _quad_type(context, vector))
        # concatenate the quads pairwise into one <4*size> vector, then pick every 4th element
        while len(columns) > 1:
            width = columns[0].type.count
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * width), list(range(2 * width)))
            columns = [builder.shuffle_vector(columns[i], columns[i + 1], mask) for i in range(0, len(columns), 2)]
        result = context.get_constant_undef(result_type)
        for position in range(4):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), size), [4 * lane + position for lane in range(size)])
            result = builder.insert_value(result, builder.shuffle_vector(columns[0], columns[0], mask), position)
        return result

    return result_type(array, start, step, count, lanes), codegen


@intrinsic
def copy_transposed(typingctx, source, start, step, count, target, target_start, lanes):
    """``target[target_start + p*lanes + l] = source[start + l*step + p]`` for ``p < lanes`` and ``l < count``
    (``1 <= count <= lanes``), zero for ``l >= count``: a ``lanes x lanes`` block transposed in registers (``lanes``
    vector loads, log2(lanes) rounds of ``lanes`` two-vector interleaves, ``lanes`` vector stores)."""
    if _count(lanes) is None or source.dtype != target.dtype:
        return None
    size = _count(lanes)
    if size & (size - 1):
        return None

    def codegen(context, builder, signature, args):
        target_value, target_start_value = args[4:6]
        vector_type = context.get_value_type(Vector(source.dtype, size))
        align = context.get_abi_sizeof(vector_type.element)
        rows = _load_rows(context, builder, signature.args[0], *args[:4], size, vector_type)
        half, mask_type = size // 2, ir.VectorType(ir.IntType(32), size)
        low = ir.Constant(mask_type, [j + side * size for j in range(half) for side in (0, 1)])
        high = ir.Constant(mask_type, [half + j + side * size for j in range(half) for side in (0, 1)])
        for _ in range(size.bit_length() - 1):  # perfect shuffles: after log2(size) rounds, rows are columns
            rows = [part for i in range(half) for part in (builder.shuffle_vector(rows[i], rows[i + half], low),
                                                           builder.shuffle_vector(rows[i], rows[i + half], high))]
        target_view = context.make_array(signature.args[4])(context, builder, target_value)
        for position, column in enumerate(rows):
            offset = builder.add(target_start_value, ir.Constant(target_start_value.type, position * size))
            pointer = _element_pointer(context, builder, signature.args[4], target_value, offset, vector_type,
                                       target_view)
            builder.store(column, pointer, align=align)
        return context.get_dummy_value()

    return types.none(source, start, step, count, target, target_start, lanes), codegen


@intrinsic
def even_odd(typingctx, a, b):
    """``(even, odd)``: lane ``l`` of ``even`` is element ``2l`` and of ``odd`` element ``2l + 1`` of the ``2*lanes``
    elements ``a`` then ``b`` (two shuffles)."""
    if not (isinstance(a, Vector) and a == b):
        return None
    result_type = types.UniTuple(a, 2)

    def codegen(context, builder, signature, args):
        result = context.get_constant_undef(result_type)
        for phase in (0, 1):
            mask = ir.Constant(ir.VectorType(ir.IntType(32), a.lanes), [2 * lane + phase for lane in range(a.lanes)])
            result = builder.insert_value(result, builder.shuffle_vector(args[0], args[1], mask), phase)
        return result

    return result_type(a, b), codegen


@intrinsic
def store_sums(typingctx, array, start, a0, a1, a2, a3):
    """``array[start + p] = sum of the lanes of a_p`` for ``p < 4``: four horizontal sums at once, reduced by
    shuffles across the four vectors (log2(lanes) + 1 shuffle-and-add stages), stored as 4 consecutive values."""
    if not (isinstance(a0, Vector) and a0 == a1 == a2 == a3 and a0.lanes >= 4):
        return None
    lanes = a0.lanes

    def codegen(context, builder, signature, args):
        def mask(indices):
            return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), indices)

        half, quarter = lanes // 2, lanes // 4
        # pairs: [a lower half + a upper half, b lower half + b upper half]
        low, high = mask(list(range(half)) + [lanes + j for j in range(half)]), \
            mask([half + j for j in range(half)] + [lanes + half + j for j in range(half)])
        pairs = [builder.fadd(builder.shuffle_vector(a, b, low), builder.shuffle_vector(a, b, high))
                 for a, b in ((args[2], args[3]), (args[4], args[5]))]
        # quarters: [a0, a1, a2, a3] partial sums, lanes // 4 each
        first = [j for segment in (0, half) for j in range(segment, segment + quarter)]
        second = [j + quarter for j in first]
        folded = builder.fadd(
            builder.shuffle_vector(pairs[0], pairs[1], mask(first + [lanes + j for j in first])),
            builder.shuffle_vector(pairs[0], pairs[1], mask(second + [lanes + j for j in second])))
        width = quarter
        while width > 1:  # fold each quarter's upper half onto its lower half
            width //= 2
            shifted = mask([(j + width) % lanes for j in range(lanes)])
            folded = builder.fadd(folded, builder.shuffle_vector(folded, folded, shifted))
        sums = builder.shuffle_vector(folded, folded, mask([0, quarter, 2 * quarter, 3 * quarter]))
        quad = _quad_type(context, a0)
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1], quad)
        builder.store(sums, pointer, align=context.get_abi_sizeof(quad.element))
        return context.get_dummy_value()

    return types.none(array, start, a0, a1, a2, a3), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the cache line of ``array[index]`` into every cache level (LLVM ``prefetch``: read, high locality,
    data); an index past the array is harmless (a prefetch never faults), so it is not bounds-checked."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        byte_pointer = ir.IntType(8).as_pointer()
        address = builder.bitcast(builder.gep(view.data, [args[1]]), byte_pointer)
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]), "llvm.prefetch.p0i8")
        builder.call(function, [address, ir.Constant(int32, 0), ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen
