"""What a rank of a distributed job settles before it consumes: whether the job can run at all, its
device, the model every rank restores, and where every partition starts."""

from __future__ import annotations

import json

from stream_learner.config import Settings, TrainSettings
from stream_learner.errors import ConfigError, StreamLearnerError
from stream_learner.ingest.job_windows import JobWindower
from stream_learner.learning.collective import Group, local_rank
from stream_learner.learning.learner import Learner
from stream_learner.learning.models import ModelSpec
from stream_learner.learning.sharded_trainer import ShardedTrainer
from stream_learner.learning.trainer import resolve_device
from stream_learner.snapshots.recovery import OnRefused, Restored, restore
from stream_learner.snapshots.signing import Verifier


def check_settings(settings: Settings) -> None:
    """What a distributed job does not support (yet): a `ConfigError` naming the setting."""
    if settings.window.kind != "event_time":
        raise ConfigError("window.kind", "a distributed job aligns its ranks' windows by event time")
    if settings.model.table != "hash":
        raise ConfigError("model.table", "a distributed job shards hashed tables only (dynamic: one process)")
    if settings.warm_start.pretrained is not None:
        raise ConfigError("warm_start.pretrained", "not supported by a distributed job (restore a snapshot)")
    if settings.catchup.enabled:
        raise ConfigError("catchup.enabled", "not supported by a distributed job (ranks train in lockstep)")
    if settings.distill.enabled:
        raise ConfigError(
            "distill.enabled", "not supported by a distributed job (a student trains in one process)"
        )


def check_partitions(settings: Settings, partitions: int, ranks: int, setting: str) -> None:
    """Every rank reads at least one partition (rank r reads the partitions p mod ranks = r)."""
    if ranks > partitions:
        raise ConfigError(
            setting,
            f"{ranks} ranks, but {settings.input.topic} has {partitions} partitions "
            "(rank r reads the partitions p with p mod ranks = r): run at most that many",
        )


def device_name(settings: Settings) -> str:
    """``train.device``, with a GPU of its own per rank on a host (``cuda:LOCAL_RANK``) for CUDA."""
    device = resolve_device(settings.train.device)
    if device.type == "cuda" and device.index is None:
        device = resolve_device(f"cuda:{local_rank()}")
    return str(device)


def restore_rank(
    settings: Settings, group: Group, device: str, verifier: Verifier | None, on_refused: OnRefused
) -> Restored:
    """The newest committed model, restored by this rank into its shard (as `recovery.restore` does
    for one process); every rank must have restored the same version."""
    s = settings

    def trainer(spec: ModelSpec, train: TrainSettings, lr: float) -> ShardedTrainer:
        return ShardedTrainer(spec, train.model_copy(update={"device": device}), lr, group)

    def fresh() -> tuple[Learner, JobWindower]:
        w = s.window
        windower = JobWindower(
            idle_timeout_s=w.idle_timeout_seconds,
            size_ms=int(w.size_seconds * 1000),
            lateness_ms=int(w.allowed_lateness_seconds * 1000),
        )
        return Learner(s, make_trainer=trainer), windower

    restored = restore(s, fresh, verifier=verifier, on_refused=on_refused)
    versions = group.gather_ints([restored.meta.version if restored.meta else 0, restored.version])
    if (versions != versions[0]).any():
        raise StreamLearnerError(
            f"the ranks restored different versions (restored, newest): {versions.tolist()}"
        )
    return restored


def gather_offsets(group: Group, mine: dict[int, int]) -> dict[int, int]:
    """Every rank's offsets by partition, on rank 0 (empty on the others)."""
    parts = group.gather_bytes(json.dumps({str(p): o for p, o in mine.items()}).encode())
    return {int(p): int(o) for part in parts or [] for p, o in json.loads(part).items()}
