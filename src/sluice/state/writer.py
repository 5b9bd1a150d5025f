"""One bounded background writer: what the request path hands over without waiting, written in batches.

The audit log and the dead letters use it (the usage records will too).  The
request path calls ``put``: an append to an in-process deque, O(1), never
waiting, never raising.  Past ``queue_size`` (the queue plus what the owner
``holds`` back, e.g. the audit log's open coalescing windows) the item is
dropped and counted in ``dropped``; after ``aclose`` began every item is.

A task, started by the first ``put`` (or ``start``), takes up to
``batch_size`` items at a time, in order, and awaits ``sink(batch)``:

- it returns: the batch is done; the sink answers how many of it failed for
  good (items it could not encode, say: counted in ``failed``, never retried),
  the rest count in ``written``;
- it raises ``SinkDown(rest, failed=...)``: the backend is down.  ``rest``
  (what is still to write, in order; the sink may have turned items into what
  it built of them) goes back to the head of the queue and the writer waits a
  backoff (``first_backoff_s``, 0.1 s by default, doubling to ``max_backoff_s``, cut short by ``flush`` and
  ``aclose``) before it tries again; the queue keeps its bound meanwhile.  One
  warning when the backend goes down, one line when it takes items again;
- it raises anything else: the whole batch failed for good (logged, counted).

Owners with work of their own between batches (releasing coalescing windows,
trimming the dead letters) give ``tick(forced)``, awaited before every round
(``forced``: a flush or close wants everything now), and ``idle_s()``, how
long the writer may sleep with nothing queued (None: until the next ``put``).

``flush`` waits (bounded) until nothing is queued or held: what was handed
over so far, and what came meanwhile (under a steady stream it may reach its
timeout: it is for tests, the admin API's reads and shutdown, not the request
path); ``aclose`` writes what is queued within ``close_timeout_s``, then
cancels the task: what was not written counts in ``failed`` and is logged as
lost (a batch cut short counts whole, though the sink may have written part of
it before the cancel: the count errs towards "lost").  An error in ``tick`` or
``idle_s`` is logged and the task goes on: it never ends the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from ..tasks import cancel_and_wait

__all__ = ["BackgroundWriter", "SinkDown", "WriterCounts"]

T = TypeVar("T")

MIN_BACKOFF_S = 0.1


class SinkDown(Exception, Generic[T]):  # a signal to the writer, not an error to report
    """Raised by a sink whose backend is down: ``rest`` goes back to the queue's head; ``failed`` of the
    batch had failed for good before (the others that are neither count as written)."""

    def __init__(self, rest: Sequence[T], *, failed: int = 0) -> None:
        super().__init__(f"{len(rest)} items left to write")
        self.rest = rest
        self.failed = failed


class BackgroundWriter(Generic[T]):
    """A bounded queue and the task that writes it in batches (see the module docstring)."""

    def __init__(self, sink: Callable[[list[T]], Awaitable[int]], *, name: str, logger: logging.Logger,
                 queue_size: int, batch_size: int, close_timeout_s: float = 5.0,
                 first_backoff_s: float = MIN_BACKOFF_S, max_backoff_s: float = 5.0,
                 holds: Callable[[], int] | None = None,
                 tick: Callable[[bool], Awaitable[None]] | None = None,
                 idle_s: Callable[[], float | None] | None = None) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError(f"{name}: queue_size and batch_size must be at least 1")
        self.name = name  # in log lines ("audit log: ...") and the task's name
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.close_timeout_s = close_timeout_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._sink = sink
        self._log = logger
        self._holds = holds or _nothing
        self._tick = tick
        self._idle_s = idle_s
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()  # something was queued
        self._retry = asyncio.Event()  # a flush or close: try a down backend again now, not after the backoff
        self._waiters: list[asyncio.Future[None]] = []  # flushes waiting for the queue to empty
        self._forced = False  # a flush or close wants what the owner holds released now
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._writing = 0  # taken from the queue by the task, not written yet
        self.closing = False
        self.closed = False
        self.dropped = 0  # refused: the queue was full, or closing
        self.failed = 0  # failed for good, or still unwritten at close
        self.written = 0

    # -- the hot side ---------------------------------------------------------------------------------

    def put(self, item: T) -> bool:
        """Queues ``item``; O(1), never waits, never raises.  False (and a drop counted) when full or closing."""
        if not self.room():
            return False
        self._queue.append(item)
        self.kick()
        return True

    def room(self) -> bool:
        """True when one more item fits; else counts it dropped (the caller then keeps nothing of it)."""
        if self.closing or len(self._queue) + self._holds() >= self.queue_size:
            self.dropped += 1
            return False
        return True

    def hand_over(self, items: Iterable[T]) -> None:
        """Queues items that were counted in the bound already (``holds``): no bound check, no wake-up."""
        self._queue.extend(items)

    def kick(self) -> None:
        """Wakes the task (starting it when there is a running loop)."""
        if not self._wake.is_set():
            self._wake.set()
        if self._task is None:
            self.start()

    def start(self) -> None:
        """Starts the task on the running loop (no loop: it starts with the first ``put`` made in one)."""
        if self._task is None and not self.closed:
            with contextlib.suppress(RuntimeError):
                task_name = "sluice-" + self.name.replace(" ", "-")
                self._task = asyncio.get_running_loop().create_task(self._run(), name=task_name)

    @property
    def pending(self) -> int:
        """Items handed over and not written yet (what the owner holds included)."""
        return len(self._queue) + self._holds() + self._writing

    # -- flushing and closing -------------------------------------------------------------------------

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Waits until nothing is queued or held (what came meanwhile included); False after ``timeout_s``."""
        if self.closed or not self.pending:
            return not self.pending
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._force()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(waiter)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> int:
        """Writes what is queued (bounded by ``close_timeout_s``) and stops the task; answers how many items
        were lost (counted in ``failed``; the owner forgets what it holds)."""
        if self.closed:
            return 0
        self.closing = True
        if self._queue or self._holds():
            self._force()
        task = self._task
        if task is not None:
            self._wake.set()
            self._retry.set()
            try:
                async with asyncio.timeout(self.close_timeout_s):
                    await asyncio.shield(task)
            except TimeoutError:
                await cancel_and_wait(task)
        lost = self.pending  # a batch cut short by the cancel included
        if lost:
            self.failed += lost
            self._log.error("%s: %d could not be written before shutdown", self.name, lost)
            self._queue.clear()
            self._writing = 0
        self.closed = True
        self._release_waiters()
        return lost

    def _force(self) -> None:
        self._forced = True
        self._retry.set()
        self.kick()

    # -- the task -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._retry.wait()
                self._retry.clear()
            elif not self._queue and not self._forced:
                timeout = self._idle_for()
                if self.closing and not self._holds():
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
            if self._tick is not None:
                try:
                    await self._tick(self._forced)
                except Exception:  # the owner's own work between batches: logged, never the end of the writer
                    self._log.exception("%s: its work between batches failed", self.name)
            backoff = await self._drain(backoff)
            if not self._queue and not self._holds():
                self._forced = False
                self._release_waiters()
                if self.closing:
                    return

    def _idle_for(self) -> float | None:
        """How long to sleep with nothing queued (the owner's ``idle_s``; None: until the next ``put``)."""
        if self._idle_s is None:
            return None
        try:
            return self._idle_s()
        except Exception:  # as for tick: logged; the writer then wakes at the next put
            self._log.exception("%s: idle_s failed", self.name)
            return None

    async def _drain(self, backoff: float) -> float:
        """Writes the queue in batches; answers the backoff before the next try (0: all written)."""
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            self._writing = len(batch)
            try:
                failed = await self._sink(batch)
            except SinkDown as down:
                self._writing = 0
                self._count(len(batch) - len(down.rest), down.failed)
                queue.extendleft(reversed(down.rest))
                if not self._down:
                    self._log.warning("%s: the backend failed (%s); retrying", self.name, down.__cause__ or down)
                    self._down = True
                return min(self.max_backoff_s, max(self.first_backoff_s, backoff * 2))
            except Exception:  # a batch the backend cannot take: dropped, never the task
                self._log.exception("%s: a batch of %d could not be written", self.name, len(batch))
                self._count(len(batch), len(batch))
            else:
                self._count(len(batch), failed)
            self._writing = 0
            if self._down:
                self._log.warning("%s: the backend takes them again", self.name)
                self._down = False
        return 0.0

    def _count(self, done: int, failed: int) -> None:
        self.failed += failed
        self.written += done - failed

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _nothing() -> int:
    return 0


class WriterCounts:
    """The counters of an owner's ``writer``, read as the owner's own (``audit.dropped``, ``letters.written``)."""

    writer: BackgroundWriter[Any]

    @property
    def pending(self) -> int:
        """Handed over and not written yet."""
        return self.writer.pending

    @property
    def dropped(self) -> int:
        """Refused: the queue was full, or closing."""
        return self.writer.dropped

    @property
    def failed(self) -> int:
        """Failed for good (a bad item), or still unwritten at close."""
        return self.writer.failed

    @property
    def written(self) -> int:
        return self.writer.written
