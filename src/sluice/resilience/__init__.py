"""Resilience: what happens when a provider fails (the dead-letter queue: ``dead_letters``; its errors are in
sluice.errors, its Redis backend in sluice.state.dead_letters_redis)."""

from __future__ import annotations

from .dead_letters import (
    Attempt,
    DeadLetter,
    DeadLetters,
    Failure,
    letter_for,
    open_dead_letters,
)

__all__ = ["Attempt", "DeadLetter", "DeadLetters", "Failure", "letter_for", "open_dead_letters"]
