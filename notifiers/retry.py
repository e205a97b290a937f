"""A pure backoff policy for redelivering notices: exponential, full jitter, bounded in time."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How long to wait before retry number `attempt`, and when to stop trying."""

    base: float = 5.0
    factor: float = 2.0
    max_delay: float = 15 * 60.0
    give_up_after: timedelta = timedelta(hours=24)
    # None means no jitter: always the full exponential delay.
    jitter: random.Random | None = None
    # A receiver's Retry-After is honoured up to this many seconds; None honours any value.
    retry_after_cap: float | None = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy: base and max_delay must be >= 0 seconds")
        if self.factor < 1:
            raise ValueError(f"RetryPolicy: factor must be >= 1, got {self.factor}")
        if self.give_up_after < timedelta(0):
            raise ValueError("RetryPolicy: give_up_after must not be negative")
        if self.retry_after_cap is not None and self.retry_after_cap < 0:
            raise ValueError("RetryPolicy: retry_after_cap must be >= 0 seconds")

    @classmethod
    def instant(cls, *, give_up_after: timedelta = timedelta(hours=24)) -> RetryPolicy:
        """A policy that never waits, Retry-After included: for tests."""
        return cls(base=0.0, max_delay=0.0, give_up_after=give_up_after, retry_after_cap=0.0)

    def next_delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the `attempt`-th failed try (1 for the first failure)."""
        if attempt < 1:
            raise ValueError(f"RetryPolicy: attempt counts failed tries from 1, got {attempt}")
        ceiling = self._ceiling(attempt)
        delay = ceiling if self.jitter is None else self.jitter.uniform(0.0, ceiling)
        if retry_after is not None and retry_after > 0:
            floor = retry_after
            if self.retry_after_cap is not None:
                floor = min(floor, self.retry_after_cap)
            delay = max(delay, floor)
        return delay

    def should_give_up(self, first_attempt_at: datetime, now: datetime) -> bool:
        """True once the notice has been retried for longer than `give_up_after`."""
        return now - first_attempt_at >= self.give_up_after

    def _ceiling(self, attempt: int) -> float:
        if self.base == 0:
            return 0.0
        try:
            raw = self.base * self.factor ** (attempt - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, raw)
