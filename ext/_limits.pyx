# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# Local (in-process) rate-limit accounting, compiled.  The pure-Python twin is
# sluice/_native/_pure_limits.py and gives the same answers, bit for bit, for
# the same calls; sluice/state/redis_limits.py keeps the same model on Redis.
# One LocalLimiter holds one policy (algorithm, limit per period, burst) for
# many keys.  Time is passed in (`now`, monotonic seconds) and never read here;
# nothing here takes a lock or does I/O.
#
# Token bucket.  Capacity `burst`, refilled at rate = limit / period units a
# second, full when first seen.  A key stores (tokens, last); at `now` it holds
#     tokens + (now - last) * rate, at most burst     when now > last
#     tokens                                         otherwise (time going backwards counts as none)
# check(cost) is 0 when cost <= tokens, inf when cost > burst (it never fits),
# else (cost - tokens) / rate.  consume and adjust store tokens - cost and
# tokens + delta, at most burst and at least -burst: a key in debt waits at
# most two bucket-fills (as on Redis).
#
# Sliding window.  At most `limit` units per `period`, estimated from two fixed
# windows aligned on multiples of `period` (window w is [w * period, (w + 1) * period)):
#     estimate = prev * (1 - f) + cur
# where cur counts the current window, prev the previous one and f is the
# elapsed fraction of the current window (1 - f: the part of the previous
# window the sliding one still covers).  A key stores (cur, last, prev) and is
# read at t = max(now, last): one window later prev = cur and cur = 0, two or
# more later both are 0.  check(cost) is 0 when estimate + cost <= limit, inf
# when cost > limit, else with room = limit - cur - cost:
#     room >= 0  it fits in this window once prev's weight has shrunk: (1 - room / prev - f) * period
#     room < 0   it fits in the next one once cur's weight has shrunk:  (1 - f + g) * period,
#                g = max(0, 1 - (limit - cost) / cur)
# adjust gives back from cur first, then from prev, never below 0, and takes
# more without a bound (a window forgets everything within two periods).
# `burst` is ignored.
#
# Keys.  A dict maps each key to a slot in one C array of Slot structs that
# grows by doubling up to max_keys; freed slots go on a free list (threaded
# through `older`).  The live slots form a doubly linked recency list: check,
# consume and adjust move a key to the newest end.  An unknown key reads as
# full, so check/remaining/reset_after of one store nothing; only consume and
# adjust (taking) add keys.  A new key that finds max_keys keys tracked first
# sweeps (forgets every key back to full) and, if none was, evicts the least
# recently used key.  An evicted key comes back full: that only ever errs on
# admitting.  So that a busy table does not cost a sweep (O(max_keys)) per new
# key, a sweep made for room that freed fewer than q = max_keys // 16 keys lets
# the next q - freed new keys that find the table full evict without sweeping:
# at most one slot visit per 1/16 of a key, amortised.
#
# Floating point.  The twins evaluate the same expressions in the same order;
# the pragma below keeps C compilers from fusing a * b + c into one rounding
# (an FMA), which Python's float arithmetic never does.  A wait that comes out
# <= 0 only by rounding is reported as MIN_WAIT, so that check() answers 0.0
# exactly when it admits, and reset_after() 0.0 exactly when the key is full.

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from libc.math cimport INFINITY, floor

cdef extern from *:
    """
    #if defined(__clang__)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC optimize ("fp-contract=off")
    #endif
    """

ALGORITHMS = ("token_bucket", "sliding_window")
cdef double _MIN_WAIT = 1e-9
MIN_WAIT = _MIN_WAIT
MAX_KEYS = 2**31 - 1


cdef struct Slot:
    double level  # tokens (bucket) or the current window's count (window)
    double last   # the latest time seen
    double prev   # the previous window's count (window)
    int newer     # recency list; -1 ends it
    int older     # recency list, or the next free slot


cdef struct Reading:  # a window key as of time t
    double cur
    double prev
    double f
    double t


@cython.final
cdef class LocalLimiter:
    """Token buckets or sliding windows for many keys under one policy."""

    cdef readonly str algorithm
    cdef readonly double limit, period, burst
    cdef double rate
    cdef bint window
    cdef int max_keys, count, used, capacity, free, newest, oldest, skip_sweeps
    cdef Slot* slots
    cdef dict index  # key -> slot
    cdef list keys   # slot -> key (None when free)

    def __cinit__(self, object algorithm, double limit, double period, double burst, object max_keys=100_000):
        keys = PyNumber_Index(max_keys)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        if not (0.0 < limit < INFINITY and 0.0 < period < INFINITY and 0.0 < burst < INFINITY):
            raise ValueError("limit, period and burst must be positive finite numbers")
        if not 0.0 < limit / period < INFINITY:
            raise ValueError("limit / period is not a usable rate")
        if not 1 <= keys <= MAX_KEYS:
            raise ValueError(f"max_keys must be 1..{MAX_KEYS}")
        self.algorithm = algorithm
        self.window = algorithm == "sliding_window"
        self.limit, self.period, self.burst = limit, period, burst
        self.rate = limit / period
        self.max_keys = keys
        self.free = self.newest = self.oldest = -1
        self.index = {}
        self.keys = []

    def __dealloc__(self):
        PyMem_Free(self.slots)

    def __len__(self):
        return self.count

    # -- the public calls ------------------------------------------------------------------

    def check(self, object key, double cost, double now):
        cdef Slot fresh
        cdef Slot* s = &fresh
        cdef int i
        if not cost >= 0.0:
            raise ValueError("cost must be a number >= 0")
        i = self._find(key)
        if i < 0:
            self._fresh(s, now)
        else:
            self._touch(i)
            s = &self.slots[i]
        if self.window:
            return self._window_wait(s, cost, now)
        return self._bucket_wait(s, cost, now)

    def consume(self, object key, double cost, double now):
        cdef Slot* s
        cdef Reading r
        cdef double tokens
        cdef int i
        if not 0.0 <= cost < INFINITY:
            raise ValueError("cost must be a finite number >= 0")
        i = self._find(key)
        if i < 0:
            i = self._insert(key, now)
        else:
            self._touch(i)
        s = &self.slots[i]
        if self.window:
            r = self._read(s, now)
            s.level = r.cur + cost
            s.prev = r.prev
            s.last = r.t
        else:
            tokens = self._tokens(s, now) - cost
            if tokens < -self.burst:
                tokens = -self.burst
            s.level = tokens
            if now > s.last:
                s.last = now

    def adjust(self, object key, double delta, double now):
        cdef Slot* s
        cdef Reading r
        cdef double tokens, cur, prev
        cdef int i
        if not -INFINITY < delta < INFINITY:
            raise ValueError("delta must be a finite number")
        i = self._find(key)
        if i < 0:
            if delta >= 0.0:
                return  # an unknown key is full: nothing to give back
            i = self._insert(key, now)
        else:
            self._touch(i)
        s = &self.slots[i]
        if self.window:
            r = self._read(s, now)
            cur = r.cur - delta
            prev = r.prev
            if cur < 0.0:
                prev = prev + cur
                if prev < 0.0:
                    prev = 0.0
                cur = 0.0
            s.level = cur
            s.prev = prev
            s.last = r.t
        else:
            tokens = self._tokens(s, now) + delta
            if tokens > self.burst:
                tokens = self.burst
            elif tokens < -self.burst:
                tokens = -self.burst
            s.level = tokens
            if now > s.last:
                s.last = now

    def remaining(self, object key, double now):
        cdef Slot fresh
        cdef Slot* s = self._peek(key, &fresh, now)
        cdef Reading r
        cdef double left
        if self.window:
            r = self._read(s, now)
            left = self.limit - (r.prev * (1.0 - r.f) + r.cur)
        else:
            left = self._tokens(s, now)
        return left if left > 0.0 else 0.0

    def reset_after(self, object key, double now):
        cdef Slot fresh
        cdef Slot* s = self._peek(key, &fresh, now)
        cdef Reading r
        cdef double tokens, wait
        if self.window:
            r = self._read(s, now)
            if r.cur > 0.0:
                wait = (2.0 - r.f) * self.period
            elif r.prev > 0.0:
                wait = (1.0 - r.f) * self.period
            else:
                return 0.0
        else:
            tokens = self._tokens(s, now)
            if tokens >= self.burst:
                return 0.0
            wait = (self.burst - tokens) / self.rate
        return wait if wait > 0.0 else _MIN_WAIT

    def sweep(self, double now):
        self.skip_sweeps = 0
        return self._sweep(now)

    # -- the arithmetic --------------------------------------------------------------------

    cdef inline double _tokens(self, Slot* s, double now) noexcept:
        cdef double tokens
        if now > s.last:
            tokens = s.level + (now - s.last) * self.rate
            return self.burst if tokens > self.burst else tokens
        return s.level

    cdef inline Reading _read(self, Slot* s, double now) noexcept:
        cdef Reading r
        cdef double w, seen
        r.t = now if now > s.last else s.last
        w = floor(r.t / self.period)
        seen = floor(s.last / self.period)
        if w == seen:
            r.cur, r.prev = s.level, s.prev
        elif w == seen + 1.0:
            r.cur, r.prev = 0.0, s.level
        else:
            r.cur, r.prev = 0.0, 0.0
        r.f = (r.t - w * self.period) / self.period
        if r.f < 0.0:
            r.f = 0.0
        elif r.f > 1.0:
            r.f = 1.0
        return r

    cdef inline double _bucket_wait(self, Slot* s, double cost, double now) noexcept:
        cdef double tokens = self._tokens(s, now), wait
        if cost <= tokens:
            return 0.0
        if cost > self.burst:
            return INFINITY
        wait = (cost - tokens) / self.rate
        return wait if wait > 0.0 else _MIN_WAIT

    cdef inline double _window_wait(self, Slot* s, double cost, double now) noexcept:
        cdef Reading r = self._read(s, now)
        cdef double room, g, wait
        if r.prev * (1.0 - r.f) + r.cur + cost <= self.limit:
            return 0.0
        if cost > self.limit:
            return INFINITY
        room = self.limit - r.cur - cost
        if room >= 0.0 and r.prev > 0.0:
            wait = (1.0 - room / r.prev - r.f) * self.period
        elif r.cur > 0.0:
            g = 1.0 - (self.limit - cost) / r.cur
            if g < 0.0:
                g = 0.0
            wait = (1.0 - r.f + g) * self.period
        else:
            wait = 0.0
        return wait if wait > 0.0 else _MIN_WAIT

    cdef inline bint _full(self, Slot* s, double now) noexcept:
        cdef Reading r
        if self.window:
            r = self._read(s, now)
            return r.cur <= 0.0 and r.prev <= 0.0
        return self._tokens(s, now) >= self.burst

    # -- the table -------------------------------------------------------------------------

    cdef inline void _fresh(self, Slot* s, double now) noexcept:
        s.level = 0.0 if self.window else self.burst
        s.prev = 0.0
        s.last = now

    cdef inline int _find(self, object key) except -2:
        cdef object i = self.index.get(key)
        return -1 if i is None else <int>i

    cdef inline Slot* _peek(self, object key, Slot* fresh, double now) except NULL:
        cdef int i = self._find(key)
        if i < 0:
            self._fresh(fresh, now)
            return fresh
        return &self.slots[i]

    cdef inline void _link_newest(self, int i) noexcept:
        self.slots[i].newer = -1
        self.slots[i].older = self.newest
        if self.newest >= 0:
            self.slots[self.newest].newer = i
        else:
            self.oldest = i
        self.newest = i

    cdef inline void _unlink(self, int i) noexcept:
        cdef int newer = self.slots[i].newer, older = self.slots[i].older
        if newer >= 0:
            self.slots[newer].older = older
        else:
            self.newest = older
        if older >= 0:
            self.slots[older].newer = newer
        else:
            self.oldest = newer

    cdef inline void _touch(self, int i) noexcept:
        if i != self.newest:
            self._unlink(i)
            self._link_newest(i)

    cdef int _insert(self, object key, double now) except -1:
        cdef int i
        if self.count >= self.max_keys:
            self._make_room(now)
        if self.free >= 0:
            i = self.free
            self.free = self.slots[i].older
        else:
            if self.used == self.capacity:
                self._grow()
            i = self.used
            self.used += 1
        self._fresh(&self.slots[i], now)
        self._link_newest(i)
        self.index[key] = i
        self.keys[i] = key
        self.count += 1
        return i

    cdef int _grow(self) except -1:
        cdef Py_ssize_t capacity = self.capacity * 2 if self.capacity else 64
        cdef Slot* slots
        if capacity > self.max_keys:
            capacity = self.max_keys
        slots = <Slot*>PyMem_Realloc(self.slots, capacity * sizeof(Slot))
        if slots == NULL:
            raise MemoryError()
        self.slots = slots
        self.keys.extend([None] * (capacity - self.capacity))
        self.capacity = <int>capacity
        return 0

    cdef int _make_room(self, double now) except -1:
        cdef int quota = self.max_keys // 16, freed
        if self.skip_sweeps > 0:
            self.skip_sweeps -= 1
        else:
            freed = self._sweep(now)
            self.skip_sweeps = quota - freed if freed < quota else 0
        if self.count >= self.max_keys:
            self._remove(self.oldest)
        return 0

    cdef int _remove(self, int i) except -1:
        key = self.keys[i]
        self._unlink(i)
        del self.index[key]
        self.keys[i] = None
        self.slots[i].older = self.free
        self.free = i
        self.count -= 1
        return 0

    cdef int _sweep(self, double now) except -1:
        cdef int i = self.oldest, newer, freed = 0
        while i >= 0:
            newer = self.slots[i].newer
            if self._full(&self.slots[i], now):
                self._remove(i)
                freed += 1
            i = newer
        return freed
