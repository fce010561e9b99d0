"""Event-time windows of one rank of a distributed job, closed by the job's watermark.

Each rank of a job reads its own partitions and windows their events like a single process
(`EventTimeWindower`: epoch-aligned tumbling windows, per-partition watermarks, idleness, replays),
but no rank may close a window on its own: every rank trains its share of a window in the same step,
so a window closes when the *job's* watermark (the minimum over every rank's, which the ranks agree
on) passes its end. `JobWindower` reports this rank's part of the decision (`local_watermark_ms`,
`all_idle`, `newest_open_end_ms`) and closes what the job decided (`close_until`): every window that
ends at or before the job's close horizon. Everything at or before that horizon is closed for good
on every rank, whether this rank had events in it or not, so no rank can produce a window the job
has already trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from stream_learner.ingest.windowing import NO_TIME, EventTimeWindower, Window


@dataclass
class JobWindower(EventTimeWindower):
    #: Windows ending at or before this close (the job's decision); NO_TIME: none yet.
    close_ms: int = NO_TIME

    def close_until(self, end_ms: int) -> None:
        """The job closes every window ending at or before ``end_ms`` (from the next `tick` on)."""
        self.close_ms = max(self.close_ms, end_ms)

    def tick(self, now: float) -> list[Window]:
        """Close the windows the job's horizon has passed (never on this rank's own watermark)."""
        self.horizon_ms = max(self.horizon_ms, self.close_ms)
        ready = sorted(s for s in self._open if s + self.size_ms <= self.close_ms)
        return [self._close(s, "watermark") for s in ready]

    def local_watermark_ms(self, now: float) -> int | None:
        """This rank's watermark (the minimum over its partitions that are not idle); None when all
        of them are idle."""
        return super().watermark_ms(now)

    def newest_open_end_ms(self) -> int | None:
        """The end of the newest window still open here, if any."""
        return max(self._open) + self.size_ms if self._open else None

    def restore(self, state: dict[str, int], replay_until: dict[int, int]) -> None:
        """As `EventTimeWindower.restore`; the job's horizon starts at the restored one."""
        super().restore(state, replay_until)
        self.close_ms = self.horizon_ms
