"""What a snapshot was trained from: the state it continued and the windows it added.

Every snapshot's state carries ``lineage``, which `stream_learner.snapshots.replay` reads to train the
same model again from the input topic:

- ``base``: the version whose state training continued (the version before, or the one a restart
  restored or a rollback returned to); null for a model that started from nothing, which
  ``Learner(settings)`` rebuilds exactly (its initialisation is seeded). ``origin`` says which:
  ``snapshot``, ``fresh``, ``warm_start`` (from a file: not rebuilt) or ``rollback``.
- ``windows``: per window the snapshot adds, in training order, its time range, the mini-batch
  multiplier it was trained with, and ``until``: per partition, one past the highest offset read when
  it closed. The window held exactly the valid events of its time range at offsets from the
  snapshot's first offset up to ``until``. Windows are tumbling and closed in order, so an event of
  that range read before the window closed was in it (never late), and one read after was late; a
  restart resumes at the snapshot's first offset and skips only events of windows already closed.
  So the contents follow from the bounds, whatever the interleaving of partitions and batches was.
- ``threads``, ``device``, ``deterministic``: how it was trained; bit-exact replay needs the CPU,
  ``train.deterministic`` and the same thread count (reductions split by thread).
- ``settings``: the sections that decide what training computes (``model``, ``train``, ``lr``,
  ``guard``, ``validation``), so a replay does not depend on having the same configuration file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from stream_learner.config import Settings
from stream_learner.ingest.windowing import Window
from stream_learner.learning.trainer import resolve_device

Origin = Literal["snapshot", "fresh", "warm_start", "rollback"]
#: The settings sections a snapshot records because training depends on them.
TRAINING_SECTIONS = ("model", "train", "lr", "guard", "validation")


@dataclass
class Lineage:
    """The lineage of the next snapshot, built up window by window (on the polling thread)."""

    settings: Settings
    base: int | None
    origin: Origin
    windows: list[dict[str, Any]] = field(default_factory=list)

    @staticmethod
    def of(settings: Settings, restored_version: int | None) -> Lineage:
        """The lineage of a learner that restored ``restored_version`` (None: nothing restored)."""
        if restored_version is not None:
            return Lineage(settings, restored_version, "snapshot")
        w = settings.warm_start
        warm = w.source == "file" or w.pretrained is not None
        return Lineage(settings, None, "warm_start" if warm else "fresh")

    def trained(self, window: Window, batch_multiplier: int = 1) -> None:
        """Note a window the next snapshot adds."""
        self.windows.append(
            {
                "start_ms": window.start_ms,
                "end_ms": window.end_ms,
                "batch_multiplier": batch_multiplier,
                "until": {str(p): o for p, o in sorted(window.until.items())} if window.until else None,
            }
        )

    def rolled_back(self, version: int) -> None:
        """The model went back to ``version``'s state: what was trained since does not count."""
        self.base, self.origin, self.windows = version, "rollback", []

    def take(self, version: int) -> dict[str, Any]:
        """The ``lineage`` entry of snapshot ``version``; the next one continues it."""
        s = self.settings
        entry = {
            "base": self.base,
            "origin": self.origin,
            "windows": self.windows,
            "threads": torch.get_num_threads(),  # as the trainer set it (`cpus.cpu_threads`)
            "device": resolve_device(s.train.device).type,
            "deterministic": s.train.deterministic,
            "settings": {name: getattr(s, name).model_dump(mode="json") for name in TRAINING_SECTIONS},
        }
        self.base, self.origin, self.windows = version, "snapshot", []
        return entry
