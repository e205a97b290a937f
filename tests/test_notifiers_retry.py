"""The backoff policy: exponential growth, cap, Retry-After floor, jitter, give-up time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from notifiers.retry import RetryPolicy

T0 = datetime(2025, 1, 5, 12, 0, tzinfo=UTC)


def test_delays_grow_exponentially_then_stop_at_the_cap() -> None:
    policy = RetryPolicy(base=1.0, factor=2.0, max_delay=30.0)
    assert [policy.next_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert RetryPolicy(base=1.0, max_delay=60.0).next_delay(5000) == 60.0


def test_full_jitter_stays_under_the_ceiling_and_is_reproducible() -> None:
    def delays(seed: int) -> list[float]:
        policy = RetryPolicy(base=1.0, max_delay=100.0, jitter=random.Random(seed))
        return [policy.next_delay(n) for n in range(1, 9)]

    first = delays(7)
    assert first == delays(7)
    assert first != delays(8)
    ceilings = [1, 2, 4, 8, 16, 32, 64, 100]
    assert all(0 <= d <= c for d, c in zip(first, ceilings, strict=True))
    # Full jitter spreads retries: not every delay sits at its ceiling.
    assert any(d < c * 0.9 for d, c in zip(first, ceilings, strict=True))


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    policy = RetryPolicy(base=1.0, max_delay=30.0, jitter=random.Random(1))
    assert policy.next_delay(1, retry_after=7) == 7
    assert policy.next_delay(2, retry_after=120) == 120
    # A smaller Retry-After does not shorten the backoff.
    assert RetryPolicy(base=10.0, max_delay=60.0).next_delay(3, retry_after=2) == 40


def test_retry_after_is_honoured_only_up_to_the_cap() -> None:
    policy = RetryPolicy(base=1.0, max_delay=30.0, retry_after_cap=3600.0)
    assert policy.next_delay(1, retry_after=86_400) == 3600.0


def test_instant_policy_never_waits() -> None:
    policy = RetryPolicy.instant()
    assert [policy.next_delay(n, retry_after=7) for n in (1, 5, 50)] == [0, 0, 0]


def test_gives_up_once_the_time_budget_is_spent() -> None:
    policy = RetryPolicy(give_up_after=timedelta(hours=24))
    assert not policy.should_give_up(T0, T0 + timedelta(hours=23, minutes=59))
    assert policy.should_give_up(T0, T0 + timedelta(hours=24))
    assert policy.should_give_up(T0, T0 + timedelta(days=3))


def test_rejects_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="factor"):
        RetryPolicy(factor=0.5)
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().next_delay(0)
