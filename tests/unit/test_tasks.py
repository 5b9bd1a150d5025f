"""sluice.tasks.cancel_and_wait: a background task stopped, its cleanup run, its cancellation swallowed."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from sluice.tasks import cancel_and_wait


async def _sleeper(cleaned: list[str]) -> None:
    try:
        await asyncio.Event().wait()  # never set: only a cancel ends it
    finally:
        cleaned.append("finally")


def test_the_task_is_cancelled_and_has_run_its_finally_when_the_call_returns() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        cleaned: list[str] = []
        task = asyncio.get_running_loop().create_task(_sleeper(cleaned))
        await asyncio.sleep(0)  # pacing: one loop turn, deterministic: the task runs to its first await
        await cancel_and_wait(task)
        return task.cancelled(), cleaned

    assert asyncio.run(scenario()) == (True, ["finally"])


def test_without_cancel_it_waits_for_the_task_to_finish_by_itself() -> None:
    async def scenario() -> tuple[bool, int]:
        release = asyncio.Event()

        async def work() -> int:
            await release.wait()
            return 7

        task = asyncio.get_running_loop().create_task(work())
        waiting = asyncio.get_running_loop().create_task(cancel_and_wait(task, cancel=False))
        await asyncio.sleep(0)  # pacing: one loop turn, deterministic: both tasks reach their waits
        still_waiting = not waiting.done()
        release.set()
        await waiting
        return still_waiting, task.result()

    assert asyncio.run(scenario()) == (True, 7)


def test_an_error_the_task_ended_with_is_raised() -> None:
    async def scenario() -> None:
        async def broken() -> None:
            raise ValueError("the loop broke")

        task = asyncio.get_running_loop().create_task(broken())
        await asyncio.sleep(0)  # pacing: one loop turn, deterministic: it ends with its error before the cancel
        await cancel_and_wait(task)

    with pytest.raises(ValueError, match="the loop broke"):
        asyncio.run(scenario())


def test_a_task_already_done_is_fine() -> None:
    async def scenario() -> bool:
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))  # pacing: a task that ends at once
        await task
        await cancel_and_wait(task)
        return task.done() and not task.cancelled()

    assert asyncio.run(scenario())


def test_a_caller_cancelled_while_it_waits_is_cancelled_not_resumed() -> None:
    async def scenario() -> tuple[bool, bool]:
        release = asyncio.Event()

        async def work() -> None:
            await release.wait()

        task = asyncio.get_running_loop().create_task(work())
        went_on = False

        async def closer() -> None:
            nonlocal went_on
            await cancel_and_wait(task, cancel=False)
            went_on = True  # must not run: the closer was cancelled

        waiting = asyncio.get_running_loop().create_task(closer())
        await asyncio.sleep(0)  # pacing: one loop turn, deterministic: the closer reaches its wait
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        release.set()
        with contextlib.suppress(asyncio.CancelledError):  # the closer's cancel reached the task it awaited
            await task
        return waiting.cancelled(), went_on

    assert asyncio.run(scenario()) == (True, False)
