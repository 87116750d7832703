"""Pieces shared by the numba kernels (:mod:`._pairwise_numba`, :mod:`._ials_numba`).

Kept apart from the kernels: importing a module that defines ``parallel=True``
functions loads numba's parallel machinery (~70 MB resident), which a kernel
run on Python threads (``nogil=True``) does not need.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["prefetch_item", "prefetch_row"]


@intrinsic
def prefetch_row(typingctx, arr, row):
    """Hint the CPU to fetch row ``row`` of a C-contiguous 2-D array (every 64-byte line of it)."""
    sig = types.void(arr, row)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                        inds=[args[1], zero], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        base = builder.bitcast(ptr, i8p)
        row_bytes = aryty.dtype.bitwidth // 8 * 64  # up to 64 columns: every line of a 64-factor float32 row
        for off in range(0, row_bytes, 64):
            builder.call(fn, [builder.gep(base, [ir.Constant(ir.IntType(64), off)]), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch_item(typingctx, arr, index):
    """Hint the CPU to fetch the cache line holding element ``index`` of a 1-D array."""
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                        inds=[args[1]], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen
