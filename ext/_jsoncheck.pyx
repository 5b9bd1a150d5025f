# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# What a JSON request body has that the gateway refuses and msgspec does not check, in one pass over its
# bytes before it is decoded: invalid UTF-8 anywhere, nesting deeper than a limit, a key twice in one
# object at any level, a number beyond a double's range.  The pure-Python twin (and the contract, with the order of the problems) is
# sluice/_native/_pure_jsoncheck.py; both give the same results for the same bytes.
#
# Tokens only: strings (to the closing quote, a backslash escaping the byte after it), { } [ ] , and
# numbers (a run of 0-9 . e E + - from a digit or a minus); the rest (literals, colons, blanks) is
# skipped, so malformed JSON is left to the decode that follows.  A string right after { or after a comma
# in an object is a key.  A number is looked at only when it has an exponent or more than 308 bytes (else
# it is below 10^308): then its decimal magnitude decides, and float() the case of 10^308 to 10^309.
#
# The open containers are a fixed array of levels (MAX_DEPTH_LIMIT); the keys of the open objects are one
# stack of (pointer, size) into the body (an escaped key: into its decoded copy, kept alive in a list), an
# object's own keys on top while it is open, dropped when it closes.  A new key is compared with the
# object's keys one by one (size and first byte, then memcmp) while it has at most LINEAR of them; past
# that, the object gets an open-addressing table of key indices by FNV-1a hash, doubled when half full, so
# that a body of a million keys in one object costs a million probes, not half a million squared.
#
# UTF-8 is checked as Python's strict decoder does (no overlong forms, no surrogates, nothing past
# U+10FFFF), on the bytes >= 0x80 only.  Inside strings (most of a body) the plain bytes are skipped
# eight at a time (plain_run).

from libc.math cimport isinf
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sluice._native._pure_jsoncheck import canonical_key

__all__ = ["MAX_DEPTH_LIMIT", "json_problem"]

cdef enum:
    LEVELS = 256
    LINEAR = 16
    LOCAL_KEYS = 64

MAX_DEPTH_LIMIT = LEVELS

# The bytes the scan passes over outside strings (blanks, colons, literals): ASCII but " { } [ ] , - 0-9
cdef unsigned char PLAIN[256]
# The bytes of a number's run, each with its class: 1 a digit, 2 a point, 4 an exponent's e, 8 a sign
cdef unsigned char NUMBER[256]
for _byte in range(256):
    PLAIN[_byte] = _byte < 0x80 and _byte not in b'"{}[],-0123456789'
    NUMBER[_byte] = (1 if 0x30 <= _byte <= 0x39 else 2 if _byte == 0x2E else 4 if _byte in b"eE"
                     else 8 if _byte in b"+-" else 0)


cdef struct Key:
    const unsigned char* ptr
    Py_ssize_t size
    uint64_t hash


cdef struct Level:
    bint is_object
    Py_ssize_t first    # the object's first key in the key stack
    Py_ssize_t current  # the object's latest key, -1 before the first
    Py_ssize_t index    # the array's element
    Py_ssize_t* table   # key index + 1 by hash (0: free slot), NULL while the object is small
    Py_ssize_t mask


cdef struct Scan:
    Key* keys
    Py_ssize_t count
    Py_ssize_t capacity
    int depth
    Level levels[LEVELS]
    Key local[LOCAL_KEYS]


cdef inline Py_ssize_t utf8_length(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """The length of the well-formed UTF-8 sequence at s[i] (a byte >= 0x80); 0 when there is none."""
    cdef unsigned char c = s[i]
    cdef unsigned char low = 0x80, high = 0xBF
    cdef Py_ssize_t more, k
    if 0xC2 <= c <= 0xDF:
        more = 1
    elif c == 0xE0:
        more = 2
        low = 0xA0
    elif c == 0xED:
        more = 2
        high = 0x9F
    elif 0xE1 <= c <= 0xEF:
        more = 2
    elif c == 0xF0:
        more = 3
        low = 0x90
    elif c == 0xF4:
        more = 3
        high = 0x8F
    elif 0xF1 <= c <= 0xF3:
        more = 3
    else:
        return 0
    if i + more >= n:
        return 0
    c = s[i + 1]
    if c < low or c > high:
        return 0
    for k in range(2, more + 1):
        c = s[i + k]
        if c < 0x80 or c > 0xBF:
            return 0
    return more + 1


cdef extern from *:
    """
    /* The first index from j of a byte that ends a string's plain run: a quote, a backslash or a byte
       >= 0x80 (n when there is none).  With SSE2 (every x86-64), sixteen bytes a step: the high bit of
       each byte of (v == quote) | (v == backslash) | v.  Elsewhere eight bytes a step in a 64-bit word: a byte
       equal to q is a zero byte of w ^ q, and (v - 0x01..01) & ~v & 0x80..80 flags the zero bytes of v
       (wrongly, but only above a true one: the lowest flag is right), found with the lowest set bit on a
       little-endian machine. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    static inline Py_ssize_t sluice_plain_run(const unsigned char *s, Py_ssize_t j, Py_ssize_t n) {
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8(0x22), backslash = _mm_set1_epi8(0x5C);
        while (j + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(s + j));
            int m = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                                _mm_cmpeq_epi8(v, backslash)), v));
            if (m) return j + __builtin_ctz((unsigned)m);
            j += 16;
        }
    #elif defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (j + 8 <= n) {
            uint64_t w, x, y, t;
            memcpy(&w, s + j, 8);
            x = w ^ 0x2222222222222222ULL;
            y = w ^ 0x5C5C5C5C5C5C5C5CULL;
            t = (((x - 0x0101010101010101ULL) & ~x) | ((y - 0x0101010101010101ULL) & ~y) | w)
                & 0x8080808080808080ULL;
            if (t) return j + (Py_ssize_t)(__builtin_ctzll(t) >> 3);
            j += 8;
        }
    #endif
        while (j < n && s[j] != 0x22 && s[j] != 0x5C && s[j] < 0x80) j++;
        return j;
    }
    """
    Py_ssize_t plain_run "sluice_plain_run" (const unsigned char* s, Py_ssize_t j, Py_ssize_t n) noexcept nogil


cdef bint utf8_valid(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    while i < n:
        if s[i] < 0x80:
            i += 1
            continue
        k = utf8_length(s, i, n)
        if k == 0:
            return False
        i += k
    return True


cdef inline bint digit(unsigned char c) noexcept nogil:
    return 0x30 <= c <= 0x39


cdef int overflows(const unsigned char* s, Py_ssize_t i, Py_ssize_t end) except -1:
    """1 when s[i:end] is a JSON number a double rounds to infinity (as float() does); 0 when it is not,
    or is no JSON number (left to the decode)."""
    cdef Py_ssize_t start = i, digits = 0, zeros = 0, exponent = 0, magnitude
    cdef bint seen = False, negative = False
    if s[i] == 0x2D:
        i += 1
    if i >= end or not digit(s[i]):
        return 0
    while i < end and digit(s[i]):  # the integer part's digits from its first that is not 0
        if seen:
            digits += 1
        elif s[i] != 0x30:
            seen = True
            digits = 1
        i += 1
    if i < end and s[i] == 0x2E:
        i += 1
        if i >= end or not digit(s[i]):
            return 0
        while i < end and digit(s[i]):  # the fraction's zeros before its first significant digit
            if not seen:
                if s[i] == 0x30:
                    zeros += 1
                else:
                    seen = True
            i += 1
    if i < end and (s[i] | 0x20) == 0x65:
        i += 1
        if i < end and (s[i] == 0x2B or s[i] == 0x2D):
            negative = s[i] == 0x2D
            i += 1
        if i >= end or not digit(s[i]):
            return 0
        while i < end and digit(s[i]):
            if exponent < 1000000000000000:  # capped far above any body's count of digits
                exponent = exponent * 10 + (s[i] - 0x30)
            i += 1
        if negative:
            exponent = -exponent
    if i != end or not seen:  # no JSON number, or zero
        return 0
    magnitude = (digits - 1 if digits else -(zeros + 1)) + exponent  # 10^magnitude <= |number|
    if magnitude != 308:
        return magnitude > 308
    return isinf(float((<const char*>s)[start:end]))  # 1e308 to 1e309: DBL_MAX is 1.797...e308


cdef inline uint64_t fnv1a(const unsigned char* p, Py_ssize_t size) noexcept nogil:
    cdef uint64_t h = 0xCBF29CE484222325ULL
    cdef Py_ssize_t i
    for i in range(size):
        h = (h ^ p[i]) * 0x100000001B3ULL
    return h


cdef inline bint same(const Key* key, const unsigned char* p, Py_ssize_t size) noexcept nogil:
    return key.size == size and (size == 0 or (key.ptr[0] == p[0] and memcmp(key.ptr, p, size) == 0))


cdef int fill(Scan* scan, Level* level, Py_ssize_t slots) except -1:
    """(Re)builds the object's table with ``slots`` slots from its keys."""
    cdef Py_ssize_t* table = <Py_ssize_t*>malloc(slots * sizeof(Py_ssize_t))
    cdef Py_ssize_t x, slot
    if table == NULL:
        raise MemoryError()
    for x in range(slots):
        table[x] = 0
    free(level.table)
    level.table = table
    level.mask = slots - 1
    for x in range(level.first, scan.count):
        slot = <Py_ssize_t>(scan.keys[x].hash & <uint64_t>level.mask)
        while table[slot] != 0:
            slot = (slot + 1) & level.mask
        table[slot] = x + 1
    return 0


cdef inline int push_key(Scan* scan, const unsigned char* p, Py_ssize_t size, uint64_t h) except -1:
    cdef Key* grown
    if scan.count == scan.capacity:
        if scan.keys == scan.local:
            grown = <Key*>malloc(2 * scan.capacity * sizeof(Key))
            if grown != NULL:
                memcpy(grown, scan.local, scan.count * sizeof(Key))
        else:
            grown = <Key*>realloc(scan.keys, 2 * scan.capacity * sizeof(Key))
        if grown == NULL:
            raise MemoryError()
        scan.keys = grown
        scan.capacity *= 2
    scan.keys[scan.count].ptr = p
    scan.keys[scan.count].size = size
    scan.keys[scan.count].hash = h
    scan.count += 1
    return 0


cdef int add_key(Scan* scan, const unsigned char* p, Py_ssize_t size) except -2:
    """Adds a key to the innermost object: 1 when the object has it already, else 0."""
    cdef Level* level = &scan.levels[scan.depth - 1]
    cdef Py_ssize_t x, slot, have = scan.count - level.first
    cdef uint64_t h
    if level.table == NULL:
        for x in range(level.first, scan.count):
            if same(&scan.keys[x], p, size):
                return 1
        if have < LINEAR:
            push_key(scan, p, size, 0)
            level.current = scan.count - 1
            return 0
        for x in range(level.first, scan.count):  # the object outgrows the linear search: hash it
            scan.keys[x].hash = fnv1a(scan.keys[x].ptr, scan.keys[x].size)
        fill(scan, level, 4 * LINEAR)
    h = fnv1a(p, size)
    slot = <Py_ssize_t>(h & <uint64_t>level.mask)
    while level.table[slot] != 0:
        x = level.table[slot] - 1
        if scan.keys[x].hash == h and same(&scan.keys[x], p, size):
            return 1
        slot = (slot + 1) & level.mask
    push_key(scan, p, size, h)
    level.current = scan.count - 1
    if 2 * (have + 1) > level.mask:
        fill(scan, level, 2 * (level.mask + 1))
    else:
        level.table[slot] = scan.count
    return 0


cdef str key_text(const Key* key):
    return (<const char*>key.ptr)[:key.size].decode("utf-8", "replace")


cdef str path(Scan* scan, int levels, const Key* last):
    parts = []
    cdef int l
    cdef Level* level
    for l in range(levels):
        level = &scan.levels[l]
        if not level.is_object:
            parts.append(f"[{level.index}]")
        elif level.current >= 0:
            parts.append(("." if parts else "") + key_text(&scan.keys[level.current]))
    if last != NULL:
        parts.append(("." if parts else "") + key_text(last))
    return "".join(parts)


def json_problem(bytes body, int max_depth):
    """None, or the body's first problem: ("utf8", ""), ("depth", path), ("duplicate", path) or
    ("number", path)."""
    if not 1 <= max_depth <= LEVELS:
        raise ValueError(f"max_depth must be 1..{LEVELS}")
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = 0, j, k, size
    cdef unsigned char c, classes
    cdef bint expect_key = False, escaped
    cdef const unsigned char* key
    cdef Key dup
    cdef Level* level
    cdef Scan scan
    cdef list kept = None  # decoded escaped keys, alive while their pointers are
    cdef object problem = None
    scan.keys = scan.local
    scan.count = 0
    scan.capacity = LOCAL_KEYS
    scan.depth = 0
    try:
        while i < n:
            c = s[i]
            if PLAIN[c]:
                i += 1
            elif c == 34:  # a string
                j = i + 1
                escaped = False
                while True:
                    j = plain_run(s, j, n)
                    if j >= n:
                        break
                    c = s[j]
                    if c == 34:
                        break
                    if c == 92:
                        escaped = True
                        # The escaped byte is skipped, unless it starts a multi-byte character: that is
                        # checked as one (the twin's regular expression sees the same string boundaries).
                        j += 2 if j + 1 < n and s[j + 1] < 0x80 else 1
                    else:
                        k = utf8_length(s, j, n)
                        if k == 0:
                            return ("utf8", "")
                        j += k
                if expect_key:
                    expect_key = False
                    key = s + i + 1
                    size = (j if j < n else n) - (i + 1)
                    if escaped:
                        decoded = canonical_key((<const char*>key)[:size])
                        if kept is None:
                            kept = []
                        kept.append(decoded)
                        key = <const unsigned char*>PyBytes_AS_STRING(decoded)
                        size = PyBytes_GET_SIZE(decoded)
                    if add_key(&scan, key, size):
                        dup.ptr = key
                        dup.size = size
                        problem = ("duplicate", path(&scan, scan.depth - 1, &dup))
                        break
                i = j + 1
            elif c == 123 or c == 91:  # { [
                if scan.depth == max_depth:
                    problem = ("depth", path(&scan, scan.depth, NULL))
                    break
                level = &scan.levels[scan.depth]
                level.is_object = c == 123
                level.first = scan.count
                level.current = -1
                level.index = 0
                level.table = NULL
                scan.depth += 1
                expect_key = c == 123
                i += 1
            elif c == 125 or c == 93:  # } ]
                if scan.depth > 0:
                    scan.depth -= 1
                    level = &scan.levels[scan.depth]
                    scan.count = level.first
                    free(level.table)
                    level.table = NULL
                expect_key = False
                i += 1
            elif c == 44:  # ,
                if scan.depth > 0:
                    level = &scan.levels[scan.depth - 1]
                    if level.is_object:
                        expect_key = True
                    else:
                        level.index += 1
                i += 1
            elif c == 45 or digit(c):  # a number (after the structure: a body has more of it than numbers)
                j = i
                classes = 0
                while j < n and NUMBER[s[j]]:
                    classes |= NUMBER[s[j]]
                    j += 1
                if (classes & 4 or j - i > 308) and overflows(s, i, j):
                    problem = ("number", path(&scan, scan.depth, NULL))
                    break
                i = j
            elif c < 0x80:  # not reached: PLAIN and the branches above have all of ASCII
                i += 1
            else:
                k = utf8_length(s, i, n)
                if k == 0:
                    return ("utf8", "")
                i += k
        if problem is not None and not utf8_valid(s, i, n):  # bad UTF-8 after the problem comes first
            return ("utf8", "")
        return problem
    finally:
        for k in range(scan.depth):
            free(scan.levels[k].table)
        if scan.keys != scan.local:
            free(scan.keys)
