"""Resilience: what happens when a provider fails (the dead-letter queue: ``dead_letters``)."""

from __future__ import annotations

from .dead_letters import (
    Attempt,
    DeadLetter,
    DeadLetterError,
    DeadLetters,
    DeadLettersUnavailable,
    Failure,
    LetterNotFound,
    letter_for,
    open_dead_letters,
)

__all__ = ["Attempt", "DeadLetter", "DeadLetterError", "DeadLetters", "DeadLettersUnavailable", "Failure",
           "LetterNotFound", "letter_for", "open_dead_letters"]
