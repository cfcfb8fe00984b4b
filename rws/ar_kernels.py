"""The unit-by-unit loops of autoregressive layers as compiled CPU kernels (numba):
NADE's logits, their backward pass and its sampler, and DARN's sampler.

A NADE layer (``rws.layers.NADE``) computes, for each row and each unit i in order,

    h_i = sigmoid(a_i),   s_i = b_i + h_i . V[:, i],   a_{i+1} = a_i + x_i W[i],   a_0 = c

which in torch is a Python loop of [rows, H] operations per unit: for MNIST's 784
pixels that is thousands of small operations per step, each a pass over memory. Here
one compiled loop runs per block of rows with a_i in cache, skips the rank-1 update
where x_i = 0 (most pixels), and fuses the sigmoid into the loop that uses it. Where
x_i = 0, a_{i+1} = a_i, so h = sigmoid(a) is kept and evaluated again only after a
unit x_i = 1 (on binarized MNIST about one pixel in eight): against evaluating it at
every unit, the logits of 125 rows x 784 pixels (H = 200) took 4.3 instead of 21 ms,
their backward pass 24 instead of 32 ms, and a NADE/NADE RWS step at batch 25
x1.43-1.46 less time (A/B in one process, loaded machine). In full blocks of 8 rows
the dot products V[:, i] . h and the sums dV[:, i] += sum_j g_ij h_j run for all eight
rows in one pass over unit i's weights (``_dot8``; the backward pass): on 125 MNIST rows the
logits 2.55-3.40 -> 2.25-2.78 ms, the sampler 7.3-9.2 -> 6.1-7.5 ms, the backward pass
6.2-6.4 -> 5.4-5.6 ms, a NADE/NADE RWS step at batch 25 x1.07 (median of 6 alternating
rounds in one process). In float32 the sigmoid is a scalar function inlined into the
loops, which vectorises (exp(-a) by range reduction to 2^n 2^f and a degree-5 polynomial
for 2^f, 2^n from its exponent bits: ``_sigmoid32``, 4.6 G/s against torch.sigmoid's
2.3-2.7); float64 uses the library exponential. The kernels run on one thread (numba's;
torch's thread count does not apply to them).

    forward(x, b, c, W, VT, keep) -> (s, saved)        the logits  [R, D]
    backward(x, saved, W, VT, g) -> (dc, dW, dVT)      with g = dL/ds
    sample(b, c, W, VT, uT, clamp, tail_v, keep) -> (x, s, saved)
                                                      x_i = [u_i < p(x_i = 1 | x_<i)]
    darn_sample(base, W, uT, clamp, tail_v) -> (x, auto)   DARN: auto = x (W * M), its log_prob's GEMM
    sparse_product(x, W, tri) -> x W or x (W * M)    products with binary inputs (data,
    sparse_weight_grad(x, G, tri) -> x^T G or (x^T G) * M     dreams; DARN's own units),
                                                             from the nonzero x only

(the samplers compare each logit with ``draw_thresholds(uT, clamp)``, the uniforms'
logits, rather than each uniform with a probability)

Shapes: x, b, s, g [R, D]; c [R, H]; W, VT [D, H] (VT = V^T, unit i's weights a row);
uT [D, R], the uniforms unit-major as the torch sampler draws them, so both paths give
the same draws. The backward pass keeps nothing [R, D, H] from the forward pass: with
``keep`` the forward pass (or the sampler) saves a_D and a_i at every ``ANCHOR``-th unit
(``saved`` [(D - 1) // ANCHOR + 2, R, H]), and the backward pass walks the units down
from a_D, recovering a_i = a_{i+1} - x_i W[i] (re-anchored at the saved values, so
rounding cannot drift) and evaluating each h_i once. (It ran the updates up to a_D
itself before: on 125 MNIST rows that was 0.39 of 4.3 ms, and 0.13 of 2.2 on a 200-unit
layer of h.) The saved values are held until the backward pass: 14 x H floats a row for
784 units (2,800 at H = 200, about as much as the layer's data, biases and logits
together), 5 x H for 200 units; evaluation under torch.no_grad keeps none. A DARN's
sampler likewise
skips the update of the later units' logits where x_j = 0, and for sparse x (MNIST's
pixels, 13% on) its term x (W * M) and weight gradient (x^T G) * M run over the nonzero
x_i within the upper triangle instead of as masked dense GEMMs; so do a DARN's products
y U with binary inputs y (the data and the dreams in Q's first layer). ``available()`` says
whether numba is installed; ``rws.layers`` falls back to its torch loops without it, on
other devices, and with RWS_NUMBA=0.
"""
from __future__ import annotations

import numpy as np

from rws import jit, rng
from rws.jit import numba      # None without numba: the torch loops in rws.layers serve

_F = np.float32
_ONE32 = _F(1.0)
_NEG_LOG2_E, _LIMIT = _F(-1.4426950408889634), _F(125.0)
# e^g on |g| <= ln(2)/2, degree 5, fitted here for relative error (iteratively reweighted
# least squares on Chebyshev points): 7.5e-8 in exact arithmetic, 2.1e-7 evaluated in
# float32, against 2.4e-7 for the degree-6 Taylor polynomial it replaced (one FMA more)
_P = (1.0000001192092896, 0.9999997019767761, 0.49998894333839417, 0.16667574644088745,
      0.04191538318991661, 0.008297651074826717)
# the same polynomial in f = g / ln(2), |f| <= 1/2: 2^f = sum_k (P_k ln(2)^k) f^k, which
# spares the multiplication by ln(2) (sigmoids over rows of 200: 4.35-4.47 -> 4.62-4.67 G/s,
# the same largest relative error over [-30, 30], 1.8e-6)
_P2 = tuple(_F(p * 0.6931471805599453 ** k) for k, p in enumerate(_P))
ANCHOR = 64       # the backward pass re-anchors a_i at saved values every 64 units
BLOCK = 8         # rows walked together, sharing each unit's weights (_dot8, the backward pass)


available = jit.kernels_on      # numba there, RWS_NUMBA not "0"


def _jit(fn):
    # error_model="numpy": a division is not checked for zero, so the loops vectorise
    return numba.njit(fastmath=True, error_model="numpy", cache=True, nogil=True)(fn)


def _inline(fn):
    """A scalar function compiled into its callers' loops (the sigmoids), so they vectorise."""
    return numba.njit(fastmath=True, error_model="numpy", cache=True, inline="always")(fn)


if numba is not None:
    @numba.extending.intrinsic
    def _float32_from_bits(typingctx, bits):
        """The float32 whose bits are the int32 ``bits`` (an LLVM bitcast: free)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(numba.types.float32))
        return numba.types.float32(numba.types.int32), codegen


def exp2_32(t):
    """2^t for float32 t in [-125, 125], in a form that vectorises inside a compiled
    loop (numba has no vector exponential without Intel's SVML): 2^t = 2^n 2^f with
    n = rint(t), f = t - n, 2^f by the polynomial ``_P2`` (relative error about 2e-7),
    and 2^n made from its exponent bits."""
    n = np.rint(t)
    f = t - n
    p = _P2[0] + f * (_P2[1] + f * (_P2[2] + f * (_P2[3] + f * (_P2[4] + f * _P2[5]))))
    return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


def exp_neg32(a):
    """exp(-a) = 2^(-a log2(e)) by ``exp2_32``, float32; beyond |a| = 86.6 it returns
    2^-125 or 2^125."""
    return exp2_32(min(max(a * _NEG_LOG2_E, -_LIMIT), _LIMIT))


def _sigmoid32(a):
    """sigmoid(a) = 1 / (1 + exp(-a)), float32, by ``exp_neg32``. (Over rows of 200:
    4.6 G/s, one thread, 3.8 G/s before ``_P2``; 2.9 G/s when exp(-a) went through
    scratch arrays in a loop of its own, and torch.sigmoid runs at 2.3-2.7 G/s.)"""
    return _ONE32 / (_ONE32 + exp_neg32(a))


if numba is not None:
    exp2_32, exp_neg32 = _inline(exp2_32), _inline(exp_neg32)


def _sigmoid64(a):
    """sigmoid(a), float64, by the library exponential."""
    return 1.0 / (1.0 + np.exp(-a))


def _build(ftype):
    """DARN's sampler and the sparse products, for one scalar type (float32 or float64)."""
    zero, one = ftype(0), ftype(1)

    @_jit
    def darn_sample(base, W, tT, x, auto):
        R, D = base.shape
        acc = np.empty((BLOCK, D), base.dtype)        # sum_{i<j} x_i W[i, j] so far
        on = np.empty(BLOCK, np.int64)
        for r0 in range(0, R, BLOCK):
            rows = min(BLOCK, R - r0)
            acc[:rows] = 0
            for j in range(D):
                # the block's draws of unit j, branch-free, listing the rows that are
                # on (as ``_nonzero_rows``): a branch per draw mispredicts on about
                # half of a latent layer's (125 x 200 units, two thirds on, fresh
                # inputs each call: 0.26-0.28 -> 0.18-0.20 ms; 25 x 784 MNIST pixels
                # 0.15-0.16 -> 0.13-0.14 ms)
                n = 0
                for m in range(rows):
                    a = acc[m, j]
                    auto[r0 + m, j] = a               # unit j's term, final from here on
                    on_m = base[r0 + m, j] + a > tT[j, r0 + m]
                    x[r0 + m, j] = one if on_m else zero
                    on[n] = m
                    n += np.int64(on_m)
                # each row that is on feeds the units after j, from the multiple of 16
                # at or below j + 1: the units up to j are read out already, so adding
                # there is harmless, and the vector loop starts aligned with less
                # scalar remainder (25 rows x 784 units, half of them on, fresh
                # uniforms each call: 0.42-0.50 instead of 0.55-0.61 ms). The unsigned
                # index tells LLVM that no negative index wraps around, so the loop
                # vectorises (signed, it ran scalar: 1.9 instead of 0.4 ms)
                start = np.uint64((j + 1) & ~15)
                for t in range(n):
                    m = on[t]
                    for k in range(start, np.uint64(D)):
                        acc[m, k] += W[j, k]

    @_jit
    def _nonzero_rows(x, i, rows):
        """The rows m with x[m, i] != 0 written to rows[:n]; n. Branch-free (each m is
        written, the count advances where x is nonzero): a branch per entry mispredicts
        on fresh binary data (50 MNIST rows x 784 pixels into 200 units: 186 us with a
        new x each call, 84 us with the same x every call, which the predictor learns;
        branch-free, 120 us either way)."""
        n = 0
        for m in range(x.shape[0]):
            rows[n] = m
            n += np.int64(x[m, i] != 0)
        return n

    @_jit
    def sparse_product(x, W, out, triangular):
        """out = x W, or x (W * M) with M_ik = [i < k] (``triangular``), over the nonzero
        x_i only; input i outermost, so each row of W is read once for all rows of x."""
        R, D = x.shape
        out[:] = 0
        rows = np.empty(R, np.int64)
        for i in range(D):
            start = np.uint64(i + 1) if triangular else np.uint64(0)
            for t in range(_nonzero_rows(x, i, rows)):
                m = rows[t]
                xi = x[m, i]
                for k in range(start, np.uint64(W.shape[1])):
                    out[m, k] += xi * W[i, k]

    @_jit
    def sparse_weight_grad(x, G, dW, triangular):
        """dW = x^T G, or (x^T G) * M (``triangular``), over the nonzero x_i only; row i
        of dW stays in cache over the rows of x."""
        R, D = x.shape
        dW[:] = 0
        rows = np.empty(R, np.int64)
        for i in range(D):
            start = np.uint64(i + 1) if triangular else np.uint64(0)
            for t in range(_nonzero_rows(x, i, rows)):
                m = rows[t]
                xi = x[m, i]
                for k in range(start, np.uint64(G.shape[1])):
                    dW[i, k] += xi * G[m, k]

    return darn_sample, sparse_product, sparse_weight_grad


def _build_nade(sigmoid, ftype, HC):
    """NADE's kernels, the walk (logits and sampler) and the backward pass, for layers of
    HC hidden units. They walk the rows in blocks of ``BLOCK``: unit i's weights (W[i],
    VT[i], and dW[i], dVT[i] in the backward pass) are loaded once per block instead of
    once per row. With the row length a compile-time constant, the updates of the eight
    rows of a block vectorise in one pass over unit i's weights; with it a runtime value
    (or the row arrays passed in from outside, as a helper's arguments) LLVM gives up on
    the alias checks of eight rows and runs them scalar, several times slower; and the
    vector loops over 200 units end in one short vector step instead of a scalar
    remainder (the logits of 125 MNIST rows 1.81-1.86 -> 1.73-1.75 ms, of a 200-unit
    h-layer 1.20-1.22 -> 1.11). numba's cache keys a closure by the values it closes
    over, so each HC is its own entry.

    d = dL/da gathers g_i V[:, i] * h_i (1 - h_i) over the units. Between two changes of
    a row's a, h (1 - h) stays the same, so the backward pass sums e = sum_i g_i V[:, i]
    over the run and adds h (1 - h) * e to d once, where a changes: one FMA per unit and
    element where the per-unit form took two and read h (1 - h) again. On 125 MNIST rows
    (P's 784 | 200 layer, runs of about 8 units) 4.11-4.39 -> 3.66-4.28 ms; on h-layers
    (200 | 200, 60% on, runs under 2 units) about as before. Where a changes, one pass
    over the row closes the run, adds to dW, updates a and evaluates h (forward and
    backward of a 200-unit h-layer 2.76-2.89 -> 2.64-2.78 ms on 125 rows)."""
    sigmoid = _inline(sigmoid)
    zero, one = ftype(0), ftype(1)

    @_jit
    def _dot8(v, h, out):
        """out[j] = v . h[j] for the 8 rows of h [8, H], v read once (one pass, eight
        accumulators, no stores in the loop: it vectorises)."""
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for k in range(HC):
            vk = v[k]
            a0 += vk * h[0, k]
            a1 += vk * h[1, k]
            a2 += vk * h[2, k]
            a3 += vk * h[3, k]
            a4 += vk * h[4, k]
            a5 += vk * h[5, k]
            a6 += vk * h[6, k]
            a7 += vk * h[7, k]
        out[0], out[1], out[2], out[3] = a0, a1, a2, a3
        out[4], out[5], out[6], out[7] = a4, a5, a6, a7

    @_jit
    def walk(b, c, W, VT, tT, draw, x, s, saved):
        """The logits s of x, unit by unit: x given, or (draw) each x_i drawn from its
        logit as [s_i > t_i] (``draw_thresholds``) before it feeds the later units.
        h = sigmoid(a) is evaluated again only where a unit x_i != 0 has changed a, in
        the same pass as the update (but for the last unit, which feeds none). Unless
        ``saved`` is empty, a_i at every ``ANCHOR``-th unit and a_D go there
        (``_saved``), for the backward pass."""
        R, D = b.shape
        keep = saved.shape[0] > 0
        a, h = np.empty((BLOCK, HC), c.dtype), np.empty((BLOCK, HC), c.dtype)
        acc = np.empty(BLOCK, c.dtype)
        for r0 in range(0, R, BLOCK):
            rows = min(BLOCK, R - r0)
            a[:rows] = c[r0:r0 + rows]
            for j in range(rows):
                for k in range(HC):
                    h[j, k] = sigmoid(a[j, k])
            for i in range(D):
                if keep and i % ANCHOR == 0:
                    saved[i // ANCHOR, r0:r0 + rows] = a[:rows]
                if rows == BLOCK:                       # sigmoid(a_i) . V[:, i], 8 rows
                    _dot8(VT[i], h, acc)                # at once: VT[i] is read once
                else:
                    for j in range(rows):
                        t = zero
                        for k in range(HC):
                            t += VT[i, k] * h[j, k]
                        acc[j] = t
                for j in range(rows):
                    logit = b[r0 + j, i] + acc[j]
                    s[r0 + j, i] = logit
                    if draw:
                        x[r0 + j, i] = one if logit > tT[i, r0 + j] else zero
                    xi = x[r0 + j, i]
                    if xi != 0 and i < D - 1:
                        for k in range(HC):
                            ak = a[j, k] + xi * W[i, k]
                            a[j, k] = ak
                            h[j, k] = sigmoid(ak)
                    elif xi != 0:
                        for k in range(HC):
                            a[j, k] += xi * W[i, k]
            if keep:
                saved[-1, r0:r0 + rows] = a[:rows]

    @_jit
    def backward(x, saved, W, VT, g, dc, dW, dVT):
        R, D = x.shape
        a, d = np.empty((BLOCK, HC), dc.dtype), np.empty((BLOCK, HC), dc.dtype)
        h, dh = np.empty((BLOCK, HC), dc.dtype), np.empty((BLOCK, HC), dc.dtype)
        e = np.empty((BLOCK, HC), dc.dtype)        # sum of g_i V[:, i] since a last changed
        gi = np.zeros(BLOCK, dc.dtype)
        dW[:] = 0
        dVT[:] = 0
        for r0 in range(0, R, BLOCK):
            rows = min(BLOCK, R - r0)
            a[:rows] = saved[-1, r0:r0 + rows]     # a_D, as the forward pass left it
            d[:] = 0                               # dL/da_{i+1}, from the last unit down
            e[:] = 0
            dh[:] = 0                              # (the first run's close adds 0 x 0)
            for i in range(D - 1, -1, -1):
                for j in range(rows):
                    xi = x[r0 + j, i]
                    gi[j] = g[r0 + j, i]
                    # where a changes (x_i != 0, and at the last unit, where h starts):
                    # close the run into d, dW[i] += x_i d (d = dL/da_{i+1}), a_i =
                    # a_{i+1} - x_i W[i], h = sigmoid(a_i), all in one pass over the row
                    if i % ANCHOR == 0:            # the same, a_i re-anchored at its
                        m = i // ANCHOR            # saved value so rounding cannot drift
                        for k in range(HC):
                            dk = d[j, k] + dh[j, k] * e[j, k]
                            d[j, k] = dk
                            e[j, k] = zero
                            dW[i, k] += xi * dk
                            ak = saved[m, r0 + j, k]
                            a[j, k] = ak
                            hk = sigmoid(ak)
                            h[j, k] = hk
                            dh[j, k] = hk * (one - hk)
                    elif xi != 0 or i == D - 1:
                        for k in range(HC):
                            dk = d[j, k] + dh[j, k] * e[j, k]
                            d[j, k] = dk
                            e[j, k] = zero
                            dW[i, k] += xi * dk
                            ak = a[j, k] - xi * W[i, k]
                            a[j, k] = ak
                            hk = sigmoid(ak)
                            h[j, k] = hk
                            dh[j, k] = hk * (one - hk)
                if rows == BLOCK:                  # dVT[i] += sum_j g_ij h_j and
                    g0, g1, g2, g3 = gi[0], gi[1], gi[2], gi[3]    # e_j += g_ij VT[i], the
                    g4, g5, g6, g7 = gi[4], gi[5], gi[6], gi[7]    # 8 rows in one pass
                    for k in range(HC):                            # over unit i's weights
                        vk = VT[i, k]
                        dVT[i, k] += (g0 * h[0, k] + g1 * h[1, k] + g2 * h[2, k]
                                      + g3 * h[3, k] + g4 * h[4, k] + g5 * h[5, k]
                                      + g6 * h[6, k] + g7 * h[7, k])
                        e[0, k] += g0 * vk
                        e[1, k] += g1 * vk
                        e[2, k] += g2 * vk
                        e[3, k] += g3 * vk
                        e[4, k] += g4 * vk
                        e[5, k] += g5 * vk
                        e[6, k] += g6 * vk
                        e[7, k] += g7 * vk
                else:
                    for j in range(rows):
                        gj = gi[j]
                        for k in range(HC):
                            dVT[i, k] += gj * h[j, k]
                            e[j, k] += gj * VT[i, k]
            for j in range(rows):                  # the last runs closed: dc = d
                for k in range(HC):
                    dc[r0 + j, k] = d[j, k] + dh[j, k] * e[j, k]

    return walk, backward


_kernels = {}


# each dtype's sigmoid and scalar type, around which its kernels are built
_SIGMOIDS = {"float32": (_sigmoid32, np.float32), "float64": (_sigmoid64, np.float64)}


def _for(dtype):
    """DARN's sampler and the sparse products for a numpy dtype (float32 or float64),
    compiled on first use: (darn_sample, sparse_product, sparse_weight_grad). Keyed by
    the dtype itself: its name is a Python-level property of numpy's, 4 us a call."""
    kernels = _kernels.get(dtype)
    if kernels is None:
        kernels = _kernels[dtype] = _build(np.dtype(dtype).type)
    return kernels


def _nade_for(dtype, H: int):
    """NADE's (walk, backward) for a dtype and H hidden units, compiled on first use."""
    kernels = _kernels.get((dtype, H))
    if kernels is None:
        kernels = _kernels[(dtype, H)] = _build_nade(*_SIGMOIDS[np.dtype(dtype).name],
                                                     int(H))
    return kernels


# a counter of the work the kernels do (rws.bench sets it):
# on_work(vector FLOPs, sigmoids, masked FLOPs)
on_work = None


def _count(vector_flops: int, sigmoids: int, masked_flops: int = 0) -> None:
    """Report work to ``on_work``; callers test ``on_work is not None`` first, so a
    training step does not pay for the counting (1.7 of 36 ms in a NADE/NADE step)."""
    on_work(int(vector_flops), int(sigmoids), int(masked_flops))


def count_masked(rows: int, mask) -> None:
    """Report the FLOPs that a dense product over ``rows`` rows, x (W * M), (x^T G) * M
    or G (W * M)^T, spends on the zeros of a mask M: 2 x rows x M's zeros. They multiply
    weights known to be zero, so ``rws.bench``'s floor leaves them out."""
    if on_work is not None:
        _count(0, 0, 2 * rows * (mask.numel() - int(mask.count_nonzero())))


def _sigmoid_rows(x, anchored: bool) -> int:
    """How many times the kernels evaluate h = sigmoid(a) over H units: once per row at
    the start of its walk, then after each unit x_i != 0 that feeds a later unit (and
    at every re-anchoring, walking down)."""
    R, D = x.shape
    if not anchored:
        return R + np.count_nonzero(x[:, :-1])
    at_anchor = np.arange(D - 1) % ANCHOR == 0
    return R * (1 + int(at_anchor.sum())) + np.count_nonzero(x[:, :-1][:, ~at_anchor])


def draw_thresholds(uT, clamp: bool, tail_v=None):
    """The logit thresholds t of uniforms u: [u < p] = [a > t] for p = sigmoid(a),
    t = log(u / (1 - u)); for the clamped p = 0.9999 sigmoid(a) + 5e-6 (the original
    code's), t = logit((u - 5e-6) / 0.9999), -inf below 0 (always drawn) and +inf
    above 1 (never). One vectorised logarithm per draw here spares the kernels a
    scalar exponential per draw inside their loops over units: a DARN's sampler,
    25 x 784 MNIST pixels, took half the time. ``tail_v``: m -> m float64 uniforms V
    for the m draws within ``rng.TAIL_CELLS`` cells of 0 or 1 (in flat order), whose
    thresholds are taken again from u' = (k + V) / 2^24 as
    ``layers.bernoulli.tail_thresholds`` takes them (the lattice alone turns every unit
    on at u = 0); a compiled search and refinement, a third of the NumPy operations'
    time on these few draws."""
    f = uT.dtype.type
    u = np.clip((uT - f(5e-6)) / f(0.9999), f(0), f(1)) if clamp else uT
    with np.errstate(divide="ignore"):
        t = np.log(u / (1 - u))
    if tail_v is not None:
        flat = np.ascontiguousarray(uT).reshape(-1)
        idx = np.empty(flat.size, np.int64)
        tail = f(rng.TAIL_CELLS * 2.0 ** -24)
        m = tail_search(flat, tail, f(1) - tail, idx)
        _tail_refine(t.reshape(-1), flat, idx[:m], tail_v(m), clamp)
    if on_work is not None:
        _count(0, t.size)
    return t


SEARCH_BLOCK = 64


def tail_search(u, lo, hi, idx):
    """The flat indices of u [n] below lo or at or above hi into idx (in order); returns
    how many (the draws near the lattice's ends, ``rng.tail_uniforms``' search). Such
    draws are rare (2^-9 of them): each block of ``SEARCH_BLOCK`` is first tested as a
    whole, in a loop without branches that vectorises, and only blocks with a hit are
    searched element by element. 100,000 float32 draws (a DARN 200 sampler's at batch
    100) 73 -> 12 us, 19,600 (MNIST pixels at batch 25) 14.5 -> 2.6 us, one thread."""
    n = u.shape[0]
    end = n - n % SEARCH_BLOCK
    m = 0
    for s in range(0, end, SEARCH_BLOCK):
        hit = False
        for i in range(s, s + SEARCH_BLOCK):
            hit |= (u[i] < lo) | (u[i] >= hi)
        if hit:
            for i in range(s, s + SEARCH_BLOCK):
                if u[i] < lo or u[i] >= hi:
                    idx[m] = i
                    m += 1
    for i in range(end, n):
        if u[i] < lo or u[i] >= hi:
            idx[m] = i
            m += 1
    return m


def tail_uniform(u, v):
    """(u', 1 - u') in float64 for the lattice value u = k / 2^24 and V = v:
    u' = (k + v) / 2^24, as ``rng.tail_uniforms`` computes them."""
    k = np.float64(u) * 16777216.0
    return (k + v) * 5.9604644775390625e-08, (16777216.0 - k - v) * 5.9604644775390625e-08


def _tail_refine(t, u, idx, v, clamp):
    """t[idx] = log(u' / (1 - u')) in float64 of ``tail_uniform``, or of
    (u' - 5e-6) / 0.9999 clamped (``layers.bernoulli.tail_thresholds``)."""
    for j in range(idx.shape[0]):
        lo, hi = tail_uniform(u[idx[j]], v[j])
        if clamp:
            lo, hi = (lo - 5e-6) / 0.9999, (hi - CLAMP_TOP) / 0.9999
        t[idx[j]] = np.log(max(lo, 0.0)) - np.log(max(hi, 0.0))   # -inf: always, +inf: never


CLAMP_TOP = 1 - 0.9999 - 5e-6     # 1 - the clamped sigmoid's largest value, 9.5e-5
if numba is not None:             # IEEE arithmetic (no fastmath): infinities are meant here
    tail_search = numba.njit(cache=True, nogil=True)(tail_search)
    tail_uniform = numba.njit(cache=True, inline="always")(tail_uniform)
    _tail_refine = numba.njit(cache=True, nogil=True, error_model="numpy")(_tail_refine)


def _saved(b, c, keep: bool):
    """Where the walk saves a for the backward pass: [(D - 1) // ANCHOR + 2, R, H] (a_i
    at units 0, ANCHOR, 2 ANCHOR, ..., then a_D), or empty without ``keep``."""
    (R, D), H = b.shape, c.shape[1]
    return np.empty(((D - 1) // ANCHOR + 2, R, H) if keep else (0, 0, 0), c.dtype)


def forward(x, b, c, W, VT, keep: bool = True):
    s, saved = np.empty_like(b), _saved(b, c, keep)
    _nade_for(b.dtype, c.shape[1])[0](b, c, W, VT, np.empty((0, 0), b.dtype), False, x, s,
                                     saved)
    if on_work is not None:
        R, D, H = *x.shape, c.shape[1]
        _count(2 * R * D * H + 2 * np.count_nonzero(x) * H, _sigmoid_rows(x, False) * H)
    return s, saved


def backward(x, saved, W, VT, g):
    H = saved.shape[2]
    dc, dW, dVT = np.empty((x.shape[0], H), g.dtype), np.empty_like(W), np.empty_like(VT)
    _nade_for(g.dtype, H)[1](x, saved, W, VT, g, dc, dW, dVT)
    if on_work is not None:
        # the updates down and dW where x_i != 0, dVT and e at every unit, d once a run
        runs = _sigmoid_rows(x, True)
        _count(2 * 2 * np.count_nonzero(x) * H + 2 * 2 * x.size * H + 2 * runs * H,
               runs * H)
    return dc, dW, dVT


def sample(b, c, W, VT, uT, clamp: bool, tail_v=None, keep: bool = True):
    x, s, saved = np.empty_like(b), np.empty_like(b), _saved(b, c, keep)
    _nade_for(b.dtype, c.shape[1])[0](b, c, W, VT, draw_thresholds(uT, clamp, tail_v),
                                     True, x, s, saved)
    if on_work is not None:
        R, D, H = *b.shape, c.shape[1]
        _count(2 * R * D * H + 2 * np.count_nonzero(x) * H, _sigmoid_rows(x, False) * H)
    return x, s, saved


def darn_sample(base, W, uT, clamp: bool, tail_v=None):
    """A DARN's draws x_j = [u_j < sigmoid(base_j + auto_j)] unit by unit, and their
    autoregressive terms auto_j = sum_{i<j} x_i W[i, j] (base = b + y U: [R, D];
    W [D, D], input i to output j): (x, auto)."""
    x, auto = np.empty_like(base), np.empty_like(base)
    _for(base.dtype)[0](base, W, draw_thresholds(uT, clamp, tail_v), x, auto)
    if on_work is not None:        # its pushes: x (W * M) over the draws that are on
        _count(_sparse_flops(x, x.shape[1], True), 0)
    return x, auto


def _sparse_flops(x, n_out: int, triangular: bool) -> int:
    """2 x the multiply-adds of x W over x's nonzeros: n_out for each x_i, or
    D - 1 - i within the upper triangle of x (W * M)."""
    if not triangular:
        return 2 * np.count_nonzero(x) * n_out
    return 2 * int((x.shape[1] - 1 - np.nonzero(x)[1]).sum())


def sparse_product(x, W, triangular: bool = False):
    """x W, or a DARN's autoregressive term x (W * M), M_ik = [i < k] (``triangular``),
    from x's nonzeros: x [R, D_in], W [D_in, D_out] -> [R, D_out]."""
    out = np.empty((x.shape[0], W.shape[1]), x.dtype)
    _for(x.dtype)[1](x, W, out, triangular)
    if on_work is not None:
        _count(_sparse_flops(x, W.shape[1], triangular), 0)
    return out


def sparse_weight_grad(x, G, triangular: bool = False):
    """The weight gradient x^T G, or (x^T G) * M, from x's nonzeros: x [R, D_in],
    G [R, D_out] -> [D_in, D_out]."""
    dW = np.empty((x.shape[1], G.shape[1]), x.dtype)
    _for(x.dtype)[2](x, G, dW, triangular)
    if on_work is not None:
        _count(_sparse_flops(x, G.shape[1], triangular), 0)
    return dW
