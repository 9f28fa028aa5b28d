"""How long to wait before the next delivery attempt (Alertmanager ``Retrier``).

Exponential backoff with "equal jitter": half the step is fixed, half random, so retries of
many messages that failed together spread out instead of hammering a recovering target in step.
A target's own hint (``Retry-After``) wins when it asks for longer, capped at the maximum.
"""

from __future__ import annotations

import random

from router.config import RetryConfig


def backoff_s(attempt: int, policy: RetryConfig, hint_s: float | None = None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based)."""
    step = min(policy.max, policy.initial * policy.factor ** max(0, attempt - 1))
    delay = step / 2 + random.uniform(0, step / 2)
    if hint_s is not None and hint_s > delay:
        delay = hint_s
    return min(delay, policy.max)
