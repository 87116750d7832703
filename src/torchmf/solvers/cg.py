"""Conjugate-gradient row solves over two layouts of the observed pairs.

Every row of one side solves ``A x = b`` with ``A = gram + F^T diag(w) F +
diag(lam)`` and ``b = F^T c``: iALS (:mod:`torchmf.solvers.ials`) with its
Gramian, confidences ``c`` and weights ``w = c - a0``; explicit ALS
(:mod:`torchmf.solvers.als`) with no Gramian, targets as ``c`` and unit
weights. CG touches the data only through ``F^T (w * (F v))``, so the
recurrence (:func:`cg_rows`) is written once and each layout supplies that
product:

- **CSR** (:class:`CSRPairs`): a sampled dense product (``v_u . q_i`` of
  every observed pair, never the full matrix) and a sparse-times-dense
  product, each one multithreaded kernel over the whole side. Nothing is
  gathered or padded and no Python loop runs per row or bucket, which wins
  when the other side's factors are small enough to stay in cache.
- **Gathered** (:class:`IALSChunk`): the other side's factors of a chunk of
  rows are gathered once per half-sweep into padded degree buckets and every
  CG pass is a batched matrix product over that contiguous block. It wins when
  random reads of a large factor table would be the bottleneck, and on GPUs.
  On several CPU threads the chunks are shared out whole (:func:`each_chunk`).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from torchmf.solvers.ragged import ragged_csr

__all__ = [
    "CSRPairs", "IALSBucket", "IALSChunk", "cg_rows", "chunk_data_term", "chunk_scores", "each_chunk",
    "gathered_chunks", "make_csr", "padded_gather",
]

# CG's data term: (v, residual) -> F^T (c - w * (F v)) if residual else F^T (w * (F v)), shape like v;
# the result may be overwritten by the next call with the same flag (cg_rows needs it only until then)
DataTerm = Callable[[torch.Tensor, bool], torch.Tensor]


def cg_rows(x: torch.Tensor, gram: torch.Tensor | None, lam: torch.Tensor, steps: int, data_term: DataTerm) -> None:
    """``steps`` warm-started conjugate-gradient steps on every row of ``x`` at once, in place.

    Parameters
    ----------
    x : torch.Tensor, shape (R, k)
        Warm start; overwritten with the result.
    gram : torch.Tensor, shape (k, k), optional
        A term shared by every row (iALS: ``a0 * F^T F`` over the whole other side).
    lam : torch.Tensor, shape (R, 1) or (R, k)
        Ridge penalty of each row (and dimension).
    steps : int
    data_term : callable
        The layout's product, see :data:`DataTerm`.
    """
    # r0 = b - A x0 = F^T (c - w * (F x0)) - (gram + lam) x0: two passes over the data, not three
    r = data_term(x, True)
    if gram is not None:
        r.addmm_(x, gram, alpha=-1.0)
    r.addcmul_(lam, x, value=-1.0)
    p = r.clone()
    rs = torch.linalg.vecdot(r, r).unsqueeze(1)
    for step in range(steps):
        ap = data_term(p, False)
        if gram is not None:
            ap.addmm_(p, gram)
        ap.addcmul_(lam, p)
        alpha = rs / torch.linalg.vecdot(p, ap).unsqueeze(1).clamp_min_(1e-30)
        x.addcmul_(alpha, p)
        if step == steps - 1:
            break
        r.addcmul_(alpha, ap, value=-1.0)
        rs_new = torch.linalg.vecdot(r, r).unsqueeze(1)
        torch.addcmul(r, rs_new / rs.clamp_min(1e-30), p, out=p)  # p = r + beta p, in one pass
        rs = rs_new


# ---------------------------------------------------------------------- CSR
def make_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR matrix over a fixed pattern (no invariant checks: the pattern is ours)."""
    with warnings.catch_warnings():  # torch flags CSR as beta; the two kernels used here are stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass(frozen=True)
class CSRPairs:
    """A side's observed pairs as two sparse CSR matrices sharing one pattern.

    Attributes
    ----------
    conf : torch.Tensor
        Sparse CSR ``(n, n_other)`` with ``c`` as values (iALS: the
        confidences; ALS: the targets, rewritten before each half-sweep);
        also the pattern the sampled products are taken over.
    scratch : torch.Tensor, optional
        Same pattern; its values are rewritten in place before each
        sparse-times-dense product (building a sparse tensor per product
        costs more than the product on small data). None where only
        :meth:`scores` is used (a side CG reads in another layout).
    weight : torch.Tensor, shape (nnz,), optional
        ``w`` in CSR order (iALS: ``c - a0``); None means 1.
    """

    conf: torch.Tensor
    scratch: torch.Tensor | None
    weight: torch.Tensor | None

    @classmethod
    def build(cls, crow: torch.Tensor, col: torch.Tensor, conf: torch.Tensor, weight: torch.Tensor | None,
              shape: tuple[int, int], products: bool = True) -> CSRPairs:
        """``products=False``: for :meth:`scores` only (no scratch values, a float per pair less)."""
        scratch = make_csr(crow, col, torch.empty_like(conf), shape) if products else None
        return cls(make_csr(crow, col, conf, shape), scratch, weight)

    def scores(self, v: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``v_u . q_i`` of every observed pair in CSR order, shape (nnz,); never the full matrix."""
        return torch.sparse.sampled_addmm(self.conf, v, other.T, beta=0.0).values()

    def data_term(self, other: torch.Tensor, start_scores: torch.Tensor | None = None) -> DataTerm:
        """CG's data term over all rows (see :data:`DataTerm`).

        ``start_scores`` (shape (nnz,)), when given, are the scores of the
        warm start, already known to the caller: the residual product then
        skips its sampled product.
        """
        if self.scratch is None:
            raise RuntimeError("these pairs were laid out for scores only (products=False)")
        conf, vals = self.conf.values(), self.scratch.values()  # aliases of the matrices' values

        def term(v: torch.Tensor, residual: bool) -> torch.Tensor:
            y = start_scores if residual and start_scores is not None else self.scores(v, other)
            if self.weight is None and residual:
                torch.sub(conf, y, out=vals)
            elif self.weight is None:
                vals.copy_(y)
            elif residual:
                torch.addcmul(conf, self.weight, y, value=-1.0, out=vals)
            else:
                torch.mul(y, self.weight, out=vals)
            return scratch @ other

        scratch = self.scratch
        return term


# ---------------------------------------------------------------------- gathered
@dataclass(frozen=True)
class IALSBucket:
    """Rows ``r0:r1`` of a chunk, all padded to ``width`` entries, stored in slots ``e0:e1``."""

    r0: int
    r1: int
    e0: int
    e1: int
    width: int

    def view(self, flat: torch.Tensor) -> torch.Tensor:
        """This bucket's slots of a chunk-wide ``(E, ...)`` tensor as ``(B, L, ...)``."""
        return flat[self.e0 : self.e1].view(self.r1 - self.r0, self.width, *flat.shape[1:])


@dataclass(frozen=True)
class IALSChunk:
    """Consecutive degree buckets whose gathered factors are solved together.

    CG's vector operations run once per chunk; only the two batched products
    of each pass run bucket by bucket (each bucket has its own padded width).

    Attributes
    ----------
    rows : torch.LongTensor, shape (R,)
        Rows solved by this chunk, bucket after bucket.
    cols : torch.IntTensor, shape (E,)
        Other side's row of every slot (int32 where it fits); padding points at ``n_other`` (a zero row).
    conf : torch.Tensor, shape (E,)
        Confidence ``c`` of every slot; 0 in padding. float16 when that holds
        every confidence exactly (binary data: half the memory, same numbers;
        arithmetic with the factors promotes it), else the factors' dtype.
    a0 : float
        The unobserved weight: the data term weighs slots by ``c - a0``, made
        per chunk when its CG starts (padding gathers the zero row, so its
        weight does not matter), rather than held for every pair.
    lam : torch.Tensor, shape (R, 1)
        Ridge penalty of each row.
    buckets : tuple of IALSBucket
        Bounds relative to this chunk.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    conf: torch.Tensor
    a0: float
    lam: torch.Tensor
    buckets: tuple[IALSBucket, ...]


def gathered_chunks(
    indptr: np.ndarray,
    cols: np.ndarray,
    conf: np.ndarray,
    lam: torch.Tensor,
    a0: float,
    n_cols: int,
    max_entries: int,
    device: torch.device,
    dtype: torch.dtype,
    order: np.ndarray | None = None,
    conf_map: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[IALSChunk, ...]:
    """Degree buckets (:func:`~torchmf.solvers.ragged.ragged_csr`) in chunks of at most ``max_entries`` slots.

    Parameters
    ----------
    indptr : numpy.ndarray of int, shape (n_rows + 1,)
    cols : numpy.ndarray of int, shape (nnz,)
        Columns in CSR order (ascending within a row).
    conf : numpy.ndarray, shape (nnz,)
        Confidences in CSR order (or in the order ``order`` reads them, or
        values that ``conf_map`` turns into confidences block by block).
    lam : torch.Tensor, shape (n_rows, 1)
        Ridge penalty of every row.
    a0 : float
        Unobserved weight.
    n_cols : int
    max_entries : int
        Slots per chunk (unless one row alone is longer).
    device : torch.device
    dtype : torch.dtype
    order, conf_map
        See :func:`~torchmf.solvers.ragged.ragged_csr` (``order``, ``vals_map``).
    """
    lay = ragged_csr(indptr, cols, conf, n_cols, max_elements=max_entries, growth=1.3, order=order,
                     vals_map=conf_map, cols_dtype=np.int32 if n_cols < 2**31 else np.int64, half_if_exact=True)
    rows_t = torch.as_tensor(lay.rows, device=device)
    lam_t = lam[rows_t]
    cols_t = torch.as_tensor(lay.cols, device=device)
    conf_t = torch.as_tensor(lay.vals, device=device)  # float16 when that holds every confidence exactly
    if conf_t.dtype != torch.float16:
        conf_t = conf_t.to(dtype)
    rb, eb, widths = lay.row_bounds.tolist(), lay.entry_bounds.tolist(), lay.widths.tolist()
    del lay
    out: list[IALSChunk] = []
    first = 0
    for last in range(1, len(rb)):
        # close the chunk before bucket `last` would push it past the limit
        if last == len(rb) - 1 or eb[last + 1] - eb[first] > max_entries:
            r0, e0, r1, e1 = rb[first], eb[first], rb[last], eb[last]
            buckets = tuple(
                IALSBucket(rb[b] - r0, rb[b + 1] - r0, eb[b] - e0, eb[b + 1] - e0, widths[b])
                for b in range(first, last)
            )
            out.append(IALSChunk(rows_t[r0:r1], cols_t[e0:e1], conf_t[e0:e1], a0, lam_t[r0:r1], buckets))
            first = last
    return tuple(out)


PADDED_COPY_MAX_BYTES = 64 << 20


def padded_gather(other: torch.Tensor, max_copy_bytes: int | None = None
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(cols, out) -> out`` writing ``other[cols]``, with zero rows where ``cols == len(other)`` (padding).

    Gathers from a copy of ``other`` with a zero row appended while that copy
    is small (up to ``max_copy_bytes``, default :data:`PADDED_COPY_MAX_BYTES`: the fastest), else from ``other``
    itself, zeroing the padding rows after (a million rows of 64 factors
    would cost a 256 MB copy). Both give the same block.
    """
    n, k = other.shape
    limit = PADDED_COPY_MAX_BYTES if max_copy_bytes is None else max_copy_bytes
    if other.numel() * other.element_size() <= limit:
        padded = torch.cat([other, other.new_zeros(1, k)])
        return lambda cols, out: torch.index_select(padded, 0, cols, out=out)

    def gather(cols: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        pad = (cols == n).nonzero().squeeze(1)
        torch.index_select(other, 0, cols.clamp(max=n - 1), out=out)
        return out.index_fill_(0, pad, 0.0)

    return gather


def chunk_data_term(chunk: IALSChunk, feats: torch.Tensor, scores: torch.Tensor) -> DataTerm:
    """The data term of one chunk over its gathered ``(E, k)`` block, with an ``(E,)`` scratch buffer.

    CG passes the same vector (``x`` once, then ``p`` every step) and needs each
    product only until the next one, so the per-bucket views of the input and of
    one output buffer per flag are built on the first call and reused: a chunk
    makes a few dozen small kernel calls per pass, and the Python work around
    them is what the workers of :func:`gathered_cg` contend for.
    """
    # (B,1,k) @ (B,k,L) on a transposed view: on CPU several times faster
    # than the textbook (B,L,k) @ (B,k,1), which misses MKL's fast path
    blocks = [(b, b.view(feats), b.view(scores).unsqueeze(1)) for b in chunk.buckets]
    conf = chunk.conf.to(scores.dtype)  # chunk-sized, for this chunk's CG only (float16 conf: converted once)
    weight = conf - chunk.a0
    Args = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (a, b, out) of each bucket's bmm
    cache: dict[bool, tuple[torch.Tensor, torch.Tensor, Args, Args]] = {}

    def term(v: torch.Tensor, residual: bool) -> torch.Tensor:
        hit = cache.get(residual)
        if hit is None or hit[0] is not v:
            out = torch.empty_like(v)
            forward = [(v[b.r0 : b.r1].unsqueeze(1), f.transpose(1, 2), y) for b, f, y in blocks]
            back = [(y, f, out[b.r0 : b.r1].unsqueeze(1)) for b, f, y in blocks]
            hit = cache[residual] = (v, out, forward, back)
        _, out, forward, back = hit
        for a, f, y in forward:  # y = F v, bucket by bucket
            torch.bmm(a, f, out=y)
        if residual:
            torch.addcmul(conf, weight, scores, value=-1.0, out=scores)
        else:
            scores.mul_(weight)
        for y, f, o in back:  # out = F^T y
            torch.bmm(y, f, out=o)
        return out

    return term


def chunk_scores(chunk: IALSChunk, feats: torch.Tensor, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``F x`` of every slot of a chunk into ``scores`` (0 in padding), shape (E,)."""
    for b in chunk.buckets:
        torch.bmm(x[b.r0 : b.r1].unsqueeze(1), b.view(feats).transpose(1, 2), out=b.view(scores).unsqueeze(1))
    return scores


def each_chunk(n: int, solve: Callable[[int, int], None], device: torch.device) -> None:
    """``solve(j, worker)`` for every chunk ``j < n``; on the CPU, on one Python thread per intra-op thread.

    With ``t > 1`` intra-op threads, ``min(t, n)`` Python threads take the
    chunks in turn (from the last), each running serial kernels (torch's thread count is 1
    meanwhile and restored after). Chunks are independent (disjoint rows, the
    other side read-only), so the workers never meet at a barrier, where
    intra-op threads meet at one per kernel call, and a chunk's kernels are
    too small to keep several threads busy. A chunk computes the same numbers
    whichever worker (``worker < t``) solves it; results summed over chunks
    should be added in chunk order. An error in a worker stops the others
    taking chunks and is raised here.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    workers = min(threads, n)
    if workers <= 1:
        for j in range(n):
            solve(j, 0)
        return
    queue = iter(range(n - 1, -1, -1))  # last first: the layouts put the longest rows last, short ones fill the end
    lock = threading.Lock()
    errors: list[BaseException] = []
    grad = torch.is_grad_enabled()  # thread-local in torch: the workers take the caller's

    def work(worker: int) -> None:
        try:
            with torch.set_grad_enabled(grad):
                while True:
                    with lock:
                        j = None if errors else next(queue, None)
                    if j is None:
                        return
                    solve(j, worker)
        except BaseException as e:  # raised in the calling thread below
            with lock:
                errors.append(e)

    torch.set_num_threads(1)  # the workers pick this up: serial kernels in each
    try:
        pool = [threading.Thread(target=work, args=(w,), name=f"torchmf-chunks-{w}", daemon=True)
                for w in range(workers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    finally:
        torch.set_num_threads(threads)
    if errors:
        raise errors[0]
