"""ADWIN (adaptive windowing) on the prequential loss, with a normal bound for window means."""

from __future__ import annotations

import math
from collections import deque
from typing import Any

#: ADWIN's noise estimate never goes below this fraction of the mean loss (for exactly flat input).
ADWIN_MIN_RELATIVE_STD = 1e-3


class Adwin:
    """ADWIN (Bifet and Gavaldà 2007) over the last ``max_len`` values: when some split of the window
    into an older and a newer part (each at least ``min_part`` values) has means further apart than
    the bound for confidence ``delta``, the older part is dropped; an alarm is raised when the newer
    mean is the higher. A controller sees one value per window, a mean over thousands of events and
    so close to normal, which ADWIN's distribution-free bound (made for single values in [0, 1])
    would need tens of windows to separate: the bound here is the normal one,
    sqrt(2 / m * variance * ln(2 ln(n) / delta)) with m the harmonic mean of the two parts' sizes,
    and the variance is the pooled variance *within* the two parts, so that neither the change
    itself nor the learning curve before it widens the bound; it is trusted only once the window
    holds ``min_len`` values. It usually needs one window more than Page-Hinkley, but sets its own
    scale: about one false alarm in 1000 windows of stationary noise at delta 0.002, whatever the
    size of the noise."""

    def __init__(self, delta: float, max_len: int = 64, min_part: int = 2, min_len: int = 8) -> None:
        self.delta, self.max_len, self.min_part, self.min_len = delta, max_len, min_part, min_len
        self.values: deque[float] = deque(maxlen=max_len)

    def reset(self) -> None:
        self.values.clear()

    def update(self, x: float, events: int = 1, variance: float | None = None) -> bool:
        """Add a window's mean loss (ADWIN estimates the noise of window means itself: ``events`` and
        ``variance`` are not used)."""
        self.values.append(x)
        n = len(self.values)
        if n < max(self.min_len, 2 * self.min_part):
            return False
        sums, squares = [0.0], [0.0]  # prefix sums of the values and of their squares
        for v in self.values:
            sums.append(sums[-1] + v)
            squares.append(squares[-1] + v * v)
        total, total_sq = sums[-1], squares[-1]
        log_term = math.log(2 * math.log(n) / self.delta)
        floor = (ADWIN_MIN_RELATIVE_STD * total / n) ** 2
        for split in range(self.min_part, n - self.min_part + 1):
            n0, n1 = split, n - split
            older, newer = sums[split] / n0, (total - sums[split]) / n1
            within = squares[split] - n0 * older**2 + (total_sq - squares[split]) - n1 * newer**2
            variance = max(within / (n - 2), floor)
            m = 1 / (1 / n0 + 1 / n1)
            if abs(newer - older) > math.sqrt(2 / m * variance * log_term):
                for _ in range(split):
                    self.values.popleft()
                return newer > older
        return False

    def state(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def restore(self, state: dict[str, Any]) -> None:
        self.values = deque((float(v) for v in state.get("values", [])), maxlen=self.max_len)
