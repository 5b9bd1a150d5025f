"""sluice.state.writer.BackgroundWriter with a real sink: a list that takes batches, fails on demand, or hangs.

No wall-clock assertions: each test waits for what it checks with ``wait_for`` (a bounded wait that fails the
test when the event never comes) or reads exact counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from sluice.state.writer import BackgroundWriter, SinkDown
from tests.conftest import async_wait_until

log = logging.getLogger("tests.writer")
BOUND_S = 5.0  # the most any wait in these tests may take before the test fails


class ListSink:
    """Keeps what it is given, in order.  ``down`` > 0: that many calls fail (SinkDown, half the batch written
    first); ``bad``: items it refuses for good; ``hang``: it waits until released."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.batches: list[int] = []  # the size of each batch it was called with
        self.down = 0
        self.bad: set[int] = set()
        self.hang = asyncio.Event()
        self.hang.set()
        self.called = asyncio.Event()

    async def __call__(self, batch: list[int]) -> int:
        self.called.set()
        self.batches.append(len(batch))
        await self.hang.wait()
        if self.down:
            self.down -= 1
            half = len(batch) // 2
            self.items += batch[:half]
            raise SinkDown(batch[half:]) from ConnectionError("the backend is down")
        kept = [item for item in batch if item not in self.bad]
        self.items += kept
        return len(batch) - len(kept)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), BOUND_S * 4))


def writer_for(sink: ListSink, **options: object) -> BackgroundWriter[int]:
    settings: dict[str, object] = {"queue_size": 100, "batch_size": 10, "close_timeout_s": 5.0}
    settings.update(options)
    return BackgroundWriter(sink, name="test writer", logger=log, **settings)  # type: ignore[arg-type]


def test_everything_is_written_in_order_and_in_batches_of_at_most_batch_size() -> None:
    async def scenario() -> None:
        sink = ListSink()
        writer = writer_for(sink, batch_size=7)
        for i in range(30):
            assert writer.put(i)
        assert await writer.flush(BOUND_S)
        assert sink.items == list(range(30))
        assert max(sink.batches) <= 7 and sum(sink.batches) == 30
        assert (writer.written, writer.failed, writer.dropped, writer.pending) == (30, 0, 0, 0)
        await writer.aclose()

    run(scenario)


def test_the_bound_is_kept_and_every_drop_is_counted() -> None:
    async def scenario() -> None:
        sink = ListSink()
        sink.hang.clear()  # nothing leaves the queue but the batch the sink holds
        writer = writer_for(sink, queue_size=20, batch_size=5)
        writer.put(0)
        await asyncio.wait_for(sink.called.wait(), BOUND_S)  # the first batch (item 0) is in the sink
        accepted = [i for i in range(1, 101) if writer.put(i)]
        assert accepted == list(range(1, 21))  # the queue holds 20, whatever is being written
        assert writer.dropped == 80 and writer.pending == 21
        sink.hang.set()
        assert await writer.flush(BOUND_S)
        assert sink.items == list(range(21)) and writer.written == 21
        await writer.aclose()

    run(scenario)


def test_flush_waits_until_what_was_put_before_it_is_written() -> None:
    async def scenario() -> None:
        sink = ListSink()
        sink.hang.clear()
        writer = writer_for(sink)
        for i in range(3):
            writer.put(i)
        flushing = asyncio.get_running_loop().create_task(writer.flush(BOUND_S))
        await asyncio.wait_for(sink.called.wait(), BOUND_S)
        assert not flushing.done() and sink.items == []  # the sink holds the batch: the flush is still waiting
        sink.hang.set()
        assert await flushing
        assert sink.items == [0, 1, 2]
        await writer.aclose()

    run(scenario)


def test_a_down_sink_is_retried_after_a_backoff_and_the_rest_keeps_its_order() -> None:
    async def scenario() -> None:
        sink = ListSink()
        sink.down = 3  # three calls fail, each after writing half its batch
        writer = writer_for(sink, batch_size=8)
        for i in range(20):
            writer.put(i)
        await async_wait_until(lambda: writer.written == 20, "20 written")  # no flush: the backoff retries
        assert sink.items == list(range(20))  # nothing lost, nothing twice, in order
        assert writer.failed == 0 and writer.pending == 0
        # Each failed call wrote half its batch; the next batch starts with the rest: 0-7, 4-11, 8-15, 12-19.
        assert sink.batches == [8, 8, 8, 8]
        await writer.aclose()

    run(scenario)


def test_items_refused_for_good_are_counted_failed_not_retried() -> None:
    async def scenario() -> None:
        sink = ListSink()
        sink.bad = {3, 4}
        writer = writer_for(sink)
        for i in range(6):
            writer.put(i)
        assert await writer.flush(BOUND_S)
        assert sink.items == [0, 1, 2, 5] and (writer.written, writer.failed) == (4, 2)
        await writer.aclose()

    run(scenario)


def test_a_sink_that_raises_anything_else_loses_the_batch_not_the_writer() -> None:
    async def scenario() -> None:
        calls = 0
        kept: list[int] = []

        async def sink(batch: list[int]) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("cannot encode")
            kept.extend(batch)
            return 0

        writer = BackgroundWriter(sink, name="test writer", logger=log, queue_size=10, batch_size=2)
        for i in range(4):
            writer.put(i)
        assert await writer.flush(BOUND_S)
        assert kept == [2, 3] and (writer.written, writer.failed) == (2, 2)
        await writer.aclose()

    run(scenario)


def test_close_returns_within_its_timeout_while_the_sink_hangs_and_counts_what_was_lost() -> None:
    async def scenario() -> None:
        sink = ListSink()
        sink.hang.clear()  # never released: the sink hangs for good
        writer = writer_for(sink, close_timeout_s=0.2, batch_size=4)
        for i in range(10):
            writer.put(i)
        await asyncio.wait_for(sink.called.wait(), BOUND_S)
        lost = await asyncio.wait_for(writer.aclose(), BOUND_S)  # bounded by close_timeout_s, not by the sink
        assert lost == 10 and writer.failed == 10 and writer.written == 0 and writer.pending == 0
        assert not writer.put(10) and writer.dropped == 1  # closed: every put is a drop

    run(scenario)


def test_close_writes_what_is_queued_first() -> None:
    async def scenario() -> None:
        sink = ListSink()
        writer = writer_for(sink, batch_size=3)
        for i in range(10):
            writer.put(i)
        assert await writer.aclose() == 0
        assert sink.items == list(range(10)) and writer.closed

    run(scenario)


def test_what_the_owner_holds_counts_in_the_bound_and_is_released_by_a_flush() -> None:
    async def scenario() -> None:
        sink = ListSink()
        held: list[int] = []

        async def release(forced: bool) -> None:
            if forced:
                writer.hand_over(held)
                held.clear()

        writer = BackgroundWriter(sink, name="test writer", logger=log, queue_size=5, batch_size=5,
                                  holds=held.__len__, tick=release)
        held += [100, 101, 102]
        accepted = [i for i in range(5) if writer.put(i)]
        assert accepted == [0, 1] and writer.dropped == 3 and writer.pending == 5
        assert await writer.flush(BOUND_S)
        assert sorted(sink.items) == [0, 1, 100, 101, 102] and writer.pending == 0
        await writer.aclose()

    run(scenario)


def test_a_bad_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="queue_size and batch_size"):
        BackgroundWriter(ListSink(), name="test writer", logger=log, queue_size=0, batch_size=1)


def test_an_error_in_the_owners_tick_is_logged_and_the_writer_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        sink = ListSink()
        ticks = 0

        async def tick(forced: bool) -> None:
            nonlocal ticks
            ticks += 1
            if ticks == 1:
                raise RuntimeError("the owner's tick broke")

        writer = writer_for(sink, tick=tick)
        writer.put(1)
        await async_wait_until(lambda: ticks >= 1, "the first tick")
        writer.put(2)
        assert await writer.flush(BOUND_S)
        assert sink.items == [1, 2]
        assert await writer.aclose() == 0
        assert writer.closed

    with caplog.at_level(logging.ERROR):
        run(scenario)
    assert "its work between batches failed" in caplog.text
