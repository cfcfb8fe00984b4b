"""NumPy's ``SFC64(seed)`` stream on the uniform lattice, compiled (numba): the numbers
``rng.uniform`` takes from NumPy, bit for bit, without NumPy's objects.

``rng.uniform`` seeds a fresh NumPy SFC64 bit generator for each request of 2^14 or more
numbers, draws its raw 64-bit words, and keeps the low 24 bits of each 32-bit half as
k / 2^24. Building the generator (a ``SeedSequence``, a lock, a capsule) and the three
array passes after it cost little in a loop, but inside a training step, from cold
caches, ``rng.uniform`` took about 0.13 ms a call, 36 us of it the constructor. Here one
compiled call does all of it:

    SeedSequence(seed).generate_state(3, uint64)   (O'Neill's seed_seq hash: a pool of
                                                    four 32-bit words, NumPy's constants)
    SFC64 (Doty-Humphrey's Small Fast Chaotic PRNG): s = (a, b, c, counter = 1), 12
                                                    rounds discarded, then one 64-bit word
                                                    a round
    u[2i], u[2i + 1] = (low 24 bits of the word's low, high 32-bit half) / 2^24

A test compares it with NumPy's path over seeds and lengths, float32 and float64.
"""
from __future__ import annotations

import numpy as np

from rws.jit import numba        # None without numba: rng.uniform keeps NumPy's path

_U = np.uint64
_M32, _M24 = _U(0xFFFFFFFF), _U(0xFFFFFF)
_S3, _S11, _S16, _S24, _S32, _S40 = _U(3), _U(11), _U(16), _U(24), _U(32), _U(40)
# NumPy's SeedSequence constants (numpy/random/bit_generator.pyx)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = _U(0x43b0d7e5), _U(0x931e8875), _U(0x8b51f9dd), _U(0x58f38ded)
_MIX_L, _MIX_R = _U(0xca01f9dd), _U(0x4973f715)
_ZERO, _ONE = _U(0), _U(1)


def _hashmix(value, h):
    """SeedSequence's hashmix on 32-bit words: (the mixed value, the next hash constant)."""
    value = (value ^ h) & _M32
    h = (h * _MULT_A) & _M32
    value = (value * h) & _M32
    return value ^ (value >> _S16), h


def _mix(x, y):
    r = (_MIX_L * x - _MIX_R * y) & _M32
    return r ^ (r >> _S16)


def seed_state(seed):
    """``np.random.SeedSequence(seed).generate_state(3, np.uint64)`` for 0 <= seed < 2^64."""
    entropy = np.zeros(2, np.uint64)                 # seed as little-endian 32-bit words
    entropy[0], entropy[1] = _U(seed) & _M32, _U(seed) >> _S32
    n_entropy = 2 if entropy[1] != _ZERO else 1
    pool = np.zeros(4, np.uint64)
    h = _INIT_A
    for i in range(4):
        pool[i], h = _hashmix(entropy[i] if i < n_entropy else _ZERO, h)
    for src in range(4):
        for dst in range(4):
            if src != dst:
                mixed, h = _hashmix(pool[src], h)
                pool[dst] = _mix(pool[dst], mixed)
    state = np.zeros(3, np.uint64)
    h = _INIT_B
    for i in range(6):                               # six 32-bit words, two per uint64
        word = (pool[i % 4] ^ h) & _M32
        h = (h * _MULT_B) & _M32
        word = (word * h) & _M32
        word ^= word >> _S16
        state[i // 2] |= word << (_S32 * _U(i % 2))
    return state


def next_word(a, b, c, w):
    """One SFC64 round: (the raw 64-bit word, the next state a, b, c, w)."""
    word = a + b + w
    return word, b ^ (b >> _S11), c + (c << _S3), ((c << _S24) | (c >> _S40)) + word, w + _ONE


def start(seed):
    """SFC64's state (a, b, c, w) for ``seed``, past its 12 seeding rounds."""
    state = seed_state(seed)
    a, b, c, w = state[0], state[1], state[2], _ONE
    for _ in range(12):
        _, a, b, c, w = next_word(a, b, c, w)
    return a, b, c, w


def lattice_k(word):
    """The two lattice indices k (0 <= k < 2^24) of a raw word: its halves' low 24 bits."""
    return np.int32(word & _M24), np.int32((word >> _S32) & _M24)


def lattice_uniforms(seed, u):
    """Fill u [n] (float32 or float64) with ``rng.uniform``'s NumPy numbers for ``seed``."""
    a, b, c, w = start(seed)
    n, scale = u.shape[0], u.dtype.type(2.0 ** -24)
    for j in range(0, n - 1, 2):
        word, a, b, c, w = next_word(a, b, c, w)
        k0, k1 = lattice_k(word)
        u[j], u[j + 1] = u.dtype.type(k0) * scale, u.dtype.type(k1) * scale
    if n % 2:                                        # the last word's first half
        word, a, b, c, w = next_word(a, b, c, w)
        u[n - 1] = u.dtype.type(lattice_k(word)[0]) * scale


if numba is not None:
    _hashmix = numba.njit(cache=True, inline="always")(_hashmix)
    _mix = numba.njit(cache=True, inline="always")(_mix)
    seed_state = numba.njit(cache=True, nogil=True)(seed_state)
    next_word = numba.njit(cache=True, inline="always")(next_word)
    start = numba.njit(cache=True, nogil=True)(start)
    lattice_k = numba.njit(cache=True, inline="always")(lattice_k)
    lattice_uniforms = numba.njit(cache=True, nogil=True)(lattice_uniforms)
