"""Pieces shared by the numba kernels (:mod:`._pairwise_numba`, :mod:`._ials_numba`).

Kept apart from the kernels: importing a module that defines ``parallel=True``
functions loads numba's parallel machinery (~70 MB resident), which a kernel
run on Python threads (``nogil=True``) does not need.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["prefetch_item", "prefetch_row", "sorted_contains"]


def _prefetch(builder: ir.IRBuilder, ptr: ir.Value, nbytes: int, write: int) -> None:
    """``llvm.prefetch`` of every 64-byte line of ``nbytes`` from ``ptr`` (locality 3: keep in all caches)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                        "llvm.prefetch.p0")
    base = builder.bitcast(ptr, i8p)
    for off in range(0, nbytes, 64):
        builder.call(fn, [builder.gep(base, [ir.Constant(ir.IntType(64), off)]), i32(write), i32(3), i32(1)])


def _element(context, builder, aryty, array, inds):
    ary = context.make_array(aryty)(context, builder, array)
    return cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                     strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                     inds=inds, wraparound=False)


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Hint the CPU to fetch row ``row`` of a C-contiguous 2-D array (every 64-byte line of it, for writing)."""
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ptr = _element(context, builder, aryty, args[0], [args[1], context.get_constant(types.intp, 0)])
        _prefetch(builder, ptr, aryty.dtype.bitwidth // 8 * 64, 1)  # up to 64 columns: a 64-factor float32 row
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_item(typingctx, arr, index):
    """Hint the CPU to fetch the cache line holding element ``index`` of a 1-D array (for reading)."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        _prefetch(builder, _element(context, builder, signature.args[0], args[0], [args[1]]), 1, 0)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def sorted_contains(keys, lo, end, target):
    """Whether ``target`` is in ``keys[lo:end]`` (ascending): a binary search."""
    hi = end
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and keys[lo] == target
