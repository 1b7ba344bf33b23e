"""Millisecond timings for responses' `timings_ms`, all rounded the same way."""

import time


class Stopwatch:
    """Named laps in milliseconds: `lap(name)` records the time since the previous lap (or start)."""

    def __init__(self):
        self.started = self._last = time.perf_counter()
        self.laps = {}

    def lap(self, name):
        """Record and return the lap `name`, in ms rounded to 3 places."""
        now = time.perf_counter()
        self.laps[name] = milliseconds(now - self._last)
        self._last = now
        return self.laps[name]

    def total(self):
        """Milliseconds since the stopwatch started."""
        return milliseconds(time.perf_counter() - self.started)


def milliseconds(seconds):
    return round(seconds * 1000.0, 3)
