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
#
# Token counts.  The usage object sits at the end of an OpenAI answer, so the
# last '"usage"' in the tail (USAGE_TAIL bytes) must open an object; from there
# the first '"prompt_tokens"' and '"completion_tokens"' followed by a colon and
# 1..18 digits (more is no count) give the counts, -1 when absent.  Whitespace
# is Python's bytes \s.  No JSON parse: this runs once per request.

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp
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


USAGE_TAIL = 4096


cdef inline bint is_space(char c) noexcept nogil:
    return c == 32 or (9 <= c <= 13)


cdef inline Py_ssize_t skip_space(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and is_space(s[i]):
        i += 1
    return i


cdef Py_ssize_t find(const char* s, Py_ssize_t start, Py_ssize_t n, const char* word, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, n - size + 1):
        if s[i] == word[0] and memcmp(s + i, word, size) == 0:
            return i
    return -1


cdef int64_t count_after(const char* s, Py_ssize_t start, Py_ssize_t n, const char* word,
                         Py_ssize_t size) noexcept nogil:
    """The first `word` from `start` followed by ws ':' ws and 1..18 digits; -1 if none."""
    cdef Py_ssize_t at = start, i, digits
    cdef int64_t value
    while True:
        at = find(s, at, n, word, size)
        if at < 0:
            return -1
        i = skip_space(s, at + size, n)
        at += 1
        if i >= n or s[i] != 58:  # ':'
            continue
        i = skip_space(s, i + 1, n)
        value = 0
        digits = 0
        while i < n and 48 <= s[i] <= 57:
            value = value * 10 + (s[i] - 48)
            digits += 1
            i += 1
            if digits > 18:
                break
        if 0 < digits <= 18:
            return value


def token_counts(bytes answer not None):
    cdef const char* s = answer
    cdef Py_ssize_t n = len(answer), i, floor = n - USAGE_TAIL if n > USAGE_TAIL else 0
    cdef int64_t prompt, completion
    with nogil:
        i = n - 7
        while i >= floor and not (s[i] == 34 and memcmp(s + i, b'"usage"', 7) == 0):
            i -= 1
    if i < floor:
        return -1, -1
    i = skip_space(s, i + 7, n)
    if i >= n or s[i] != 58:
        return -1, -1
    i = skip_space(s, i + 1, n)
    if i >= n or s[i] != 123:  # '{'
        return -1, -1
    prompt = count_after(s, i + 1, n, b'"prompt_tokens"', 15)
    completion = count_after(s, i + 1, n, b'"completion_tokens"', 19)
    return prompt, completion
