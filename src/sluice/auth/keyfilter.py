"""The known-key filter: which key hashes the store may hold, answered without asking it.

A Bloom filter over the SHA-256 hashes of the store's keys (revoked ones too,
so that their refusal still says "revoked" in the audit log), kept
by each worker's Authenticator (sluice.auth.keys).  A presented key the cache
does not hold is looked up in the store only when the filter says the store may
know it; any other is refused at once, with the same 401 as an unknown key.
So a flood of made-up keys costs a few bit tests each and no store query.

- **No false refusal.**  Every key hash the store held when the filter was
  built is in it, and every key the change feed reports later is added (the
  feed names the hash of each key created, rotated or revoked).  A key created
  on another instance is refused here until this worker reads the feed that
  names it: within ``auth.revocation_poll_s``, at once when change notices
  arrive by Redis pub/sub.  The worker that created it reads the feed at once.
- **False passes** cost what they cost before the filter: one store read, then
  the negative cache.  With ``BITS_PER_KEY`` bits and ``HASHES`` probes per key
  about 1 in 120 made-up keys passes (a 0.8 % false-positive rate), while the
  filter holds at most ``capacity`` keys; past that the rate grows and the
  Authenticator builds a larger filter from the store in the background.
- **Revocation does not go through the filter**: a Bloom filter cannot forget,
  and a revoked key that passes it meets the cache, which the change feed keeps
  exact (a revoked key is refused at once).

The probes come from the key hash itself (it is already a uniform SHA-256):
two 64-bit halves of its first 128 bits, combined as ``h1 + i * h2``
(Kirsch and Mitzenmacher), so a check costs one ``int(…, 16)`` and a few
shifts.  Nothing here is secret: an attacker who could find hashes passing the
filter still pays one store read each, as before the filter, and per-IP failure
limits (sluice.auth.failures) bound that.
"""

from __future__ import annotations

__all__ = ["BITS_PER_KEY", "HASHES", "MIN_CAPACITY", "KeyFilter"]

BITS_PER_KEY = 10
HASHES = 7
MIN_CAPACITY = 16_384  # 20 KB: the smallest filter made
_MASK64 = (1 << 64) - 1


class KeyFilter:
    """A Bloom filter of hex SHA-256 key hashes, sized for ``capacity`` keys."""

    __slots__ = ("_bits", "_size", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, MIN_CAPACITY)
        self._size = self.capacity * BITS_PER_KEY
        self._bits = bytearray((self._size + 7) // 8)
        self.count = 0  # keys added (a key added twice counts twice: only the bound's trigger)

    @classmethod
    def sized_for(cls, keys: int) -> KeyFilter:
        """A filter for ``keys`` keys with room for as many again (keys made later reach it through the feed)."""
        return cls(2 * keys)

    @property
    def full(self) -> bool:
        """More keys added than it was sized for: false passes grow past the stated rate."""
        return self.count > self.capacity

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def add(self, key_hash: str) -> None:
        h = int(key_hash[:32], 16)
        h1, h2 = h >> 64, (h & _MASK64) | 1
        size, bits = self._size, self._bits
        for i in range(HASHES):
            position = (h1 + i * h2) % size
            bits[position >> 3] |= 1 << (position & 7)
        self.count += 1

    def __contains__(self, key_hash: str) -> bool:
        """False: the store holds no key of this hash (as of the last change the filter was told of)."""
        try:
            h = int(key_hash[:32], 16)
        except ValueError:  # not a hex digest: no key of the store has it
            return False
        h1, h2 = h >> 64, (h & _MASK64) | 1
        size, bits = self._size, self._bits
        for i in range(HASHES):
            position = (h1 + i * h2) % size
            if not bits[position >> 3] & (1 << (position & 7)):
                return False
        return True
