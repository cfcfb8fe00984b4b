"""Exact products with a binary operand on a CPU's int8 matrix units.

A sigmoid belief layer multiplies 0/1 units by real weights, a = y W^T + b. A 0/1
operand is exact in int8, and the weights split into three int8 pieces per output
unit j with step s_j = max_i |W_ji| / 127:

    W_ji = s_j (q1_ji + q2_ji / 254 + q3_ji / 254^2) + r_ji,   q in [-127, 127],
    |r_ji| <= s_j / (2 * 254^2) = max_i |W_ji| * 6.1e-8 (about 2^-24, float32's unit
    roundoff)

Each int8 GEMM accumulates exactly in int32 (0/1 times q summed over at most 2^31/127
inputs), so y W^T is exact up to the representation error r and the final rounding to
float32: the logits agree with a float32 GEMM to float32 rounding (tests check the
error against float64 is no larger than float32's own). On CPUs with VNNI or AMX,
int8 GEMMs run about 8x faster than float32 ones (1650 vs 198 GOP/s on 2 Zen 5
cores), so three of them and the recombination take half the float32 time.

Used only inside ``evaluation()`` blocks (``estimate.log_likelihood`` opens one): the
pieces are cut once per weight per block and reused for every chunk, so the weights
must not change inside a block. (A weight version counter is not enough: the fused
Adam kernel updates parameters without bumping it.) Training keeps float32 GEMMs,
whose weights change every step. ``RWS_INT8=0`` turns the path off, ``RWS_INT8=1``
forces it on.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from rws import ar_kernels, cpu
from rws.jit import numba

PIECES = 3
BASE = 254.0          # piece p + 1 resolves piece p's rounding error (|error| <= 1/2 step)


def _cpu_has_int8_units() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu.flags())


_off = False
_block = 0          # the open evaluation block (0: none, the int8 path is off)
_blocks_opened = 0


@contextlib.contextmanager
def evaluation():
    """A block of inference with fixed weights, in which the int8 path may be used."""
    global _block, _blocks_opened
    _blocks_opened += 1
    before, _block = _block, _blocks_opened
    try:
        yield
    finally:
        _block = before


def block() -> int:
    """The open evaluation block's number (part of the key of cached pieces)."""
    return _block


@contextlib.contextmanager
def turned_off():
    """Float32 GEMMs inside the block (the FLOP counter sees only those)."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def enabled(device: torch.device) -> bool:
    """True inside an evaluation block where the int8 path is faster: a CPU with int8
    dot-product units."""
    if _off or not _block:
        return False
    setting = os.environ.get("RWS_INT8", "")
    if setting in ("0", "1"):
        return setting == "1" and device.type == "cpu"
    return device.type == "cpu" and _cpu_has_int8_units()


def split(W: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """W [n_out, n_in] float -> (three int8 pieces, each [n_in, n_out] (transposed for the
    GEMM); scale [n_out] float32: the value of one unit of the last piece, s / 254^2)."""
    step = W.detach().abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
    r = W.detach().double() / step.double()[:, None]
    pieces = []
    for _ in range(PIECES):
        q = r.round()
        pieces.append(q.t().to(torch.int8).contiguous())
        r = (r - q) * BASE
    return pieces, (step / BASE ** (PIECES - 1)).float()


def _combine(acc1, acc2, acc3, scale, bias, out):
    """out = b + s (acc3 + 254 (254 acc1 + acc2)) over [N, n] from the int32 products
    acc_p = y q_p [N, n], with the float32 roundings of ``binary_linear``'s torch
    operations: the int32 sum exact, then two
    fused multiply-adds (torch's add with alpha and addcmul round once each; here the
    float64 product of two float32 values is exact, and the sum rounds to float64 and
    then to float32, which differs from one rounding only when the first lands exactly
    halfway between two float32 values)."""
    N, n = out.shape
    for r in range(N):
        for j in range(n):
            acc = acc1[r, j] * np.int32(BASE) + acc2[r, j]
            a = np.float32(np.float64(acc3[r, j]) + BASE * np.float64(np.float32(acc)))
            out[r, j] = np.float32(np.float64(bias[j]) + np.float64(a) * np.float64(scale[j]))


if numba is not None:         # IEEE arithmetic (no fastmath): the roundings are the point
    _combine = numba.njit(cache=True, nogil=True, error_model="numpy")(_combine)


def binary_linear(y: torch.Tensor, pieces: list[torch.Tensor], scale: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """y [N, n_in] with 0/1 entries -> y W^T + b [N, n_out] float32, W as ``split``.
    With numba the three int32 products are recombined in one compiled pass
    (``_combine``: the same float32 values as the torch operations below, in one pass
    instead of five over [N, n_out]: 4.1 -> 2.1 ms for 1024 rows of SBN 200's P layer,
    of which the three int8 GEMMs take 1.5)."""
    y8 = y.to(torch.int8)
    q1, q2, q3 = pieces
    if numba is not None and ar_kernels.available() and bias.dtype == torch.float32:
        accs = [torch._int_mm(y8, q).numpy() for q in pieces]      # [N, n] int32 each
        out = np.empty(accs[0].shape, np.float32)
        _combine(*accs, scale.numpy(), bias.detach().contiguous().numpy(), out)
        return torch.from_numpy(out)
    acc = torch._int_mm(y8, q2)                    # [N, n] int32, exact
    acc.add_(torch._int_mm(y8, q1), alpha=int(BASE))   # q1 * 254 + q2: exact in int32
    a = torch._int_mm(y8, q3).float()              # (|.| <= n_in * 127 * 255)
    # float + float: adding the int32 tensor directly takes a type-promoting path ~30x slower
    a.add_(acc.float(), alpha=BASE)                # float32 roundings here and in the scale
    return torch.addcmul(bias, a, scale)
