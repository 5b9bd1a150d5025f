# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# Per-request helpers of the gateway core, compiled.  The pure-Python twin is
# sluice/_native/_pure.py; both must give the same results for the same input.
#
# Request ids.  An id is 32 lowercase hex digits: 16 for a per-process seed and
# 16 for splitmix64(counter).  splitmix64's finaliser is a bijection on 64-bit
# integers, so a process never repeats an id before 2**64 requests, and two
# processes differ by their seeds; the ids still look random, so they leak
# neither the request count nor the order.
#
# Validation.  A client's x-request-id is kept when it is 1..128 visible ASCII
# characters (0x21..0x7e); anything else could forge log lines or headers.

from libc.stdint cimport uint64_t
cimport cython

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_IS_ASCII(object s)

cdef const char* HEX = b"0123456789abcdef"
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t splitmix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void put_hex(char* out, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(15, -1, -1):
        out[i] = HEX[v & 0xF]
        v >>= 4


@cython.final
cdef class RequestIds:
    """Generates unique request ids: RequestIds(seed).next() -> 32 hex chars."""

    cdef uint64_t _seed
    cdef uint64_t _state

    def __cinit__(self, uint64_t seed):
        self._seed = seed
        self._state = 0

    cpdef str next(self):
        cdef char buf[32]
        self._state += GOLDEN
        put_hex(buf, self._seed)
        put_hex(buf + 16, splitmix64(self._state))
        return buf[:32].decode("ascii")


cpdef bint valid_request_id(str value):
    cdef Py_ssize_t n, i
    cdef const char* s
    if not PyUnicode_IS_ASCII(value):
        return False
    s = PyUnicode_AsUTF8AndSize(value, &n)
    if n == 0 or n > 128:
        return False
    for i in range(n):
        if s[i] < 0x21 or s[i] > 0x7E:
            return False
    return True
