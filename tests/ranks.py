"""Scenarios that run on every rank of a small gloo job (tests only).

`run_ranks(name, world, out)` starts ``world`` processes with the environment torchrun gives its
workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each running ``python -m
tests.ranks NAME OUT``; a scenario joins the job's process group as a rank does (`Group.join`),
compares what the sharded code computes with what one process computes on all the data, and writes
its findings as JSON to ``OUT/NAME-RANK.json`` for the test to assert on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_learner.config import TrainSettings
from stream_learner.learning.collective import Group
from stream_learner.learning.features import FeatureMapper, HashedField
from stream_learner.learning.models import FieldSpec, ModelSpec, build_model
from stream_learner.learning.realtime import Formula, RealtimeFeatures, Stream
from stream_learner.learning.sharded_trainer import ShardedTrainer
from stream_learner.learning.trainer import Trainer
from stream_learner.snapshots.shards import ShardCopier, assemble, decode_part, encode_part
from stream_learner.snapshots.state import StateCopier

#: Two fields, with real-time inputs (a dense head over 7 inputs per event), as the default model has.
SPEC = ModelSpec(
    "dnn",
    (FieldSpec("user", 37), FieldSpec("item", 23)),
    embedding_dim=4,
    hidden=(8,),
    dropout=0.0,
    extra={"count_fields": ["user", "item"], "count_inputs": 7, "features": Formula(delay_ms=150).to_dict()},
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(name: str, world: int, out: Path, timeout: float = 180.0) -> list[dict[str, Any]]:
    """Run scenario ``name`` on ``world`` ranks; every rank's findings, in rank order."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.ranks", name, str(out)], env=env))
    try:
        codes = [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0] * world, f"ranks of {name} exited with {codes}"
    return [json.loads((out / f"{name}-{rank}.json").read_text()) for rank in range(world)]


def _features() -> FeatureMapper:
    """The fields of `SPEC`, with their real-time inputs."""
    realtime = RealtimeFeatures([(f.name, f.rows) for f in SPEC.fields], Formula(delay_ms=150))
    return FeatureMapper([HashedField(f.name, f.rows) for f in SPEC.fields], realtime)


def _realtime(features: FeatureMapper) -> RealtimeFeatures:
    assert features.realtime is not None
    return features.realtime


def _fold(features: FeatureMapper, trainer: Trainer, prepared: Any) -> None:
    """Fold a window into the features and mark the rows it changed, as `Learner.process` does."""
    for field, rows in _realtime(features).fold(prepared).items():
        trainer.mark_touched(field, rows)


class _Learner:
    """The part of a `Learner` that the state copiers read."""

    def __init__(self, trainer: Trainer, features: FeatureMapper) -> None:
        self.trainer = trainer
        self.features = features
        self.spec = SPEC

    def tensors(self, copy: bool = True) -> dict[str, torch.Tensor]:
        counts = {k: torch.from_numpy(v.copy() if copy else v) for k, v in self.features.state().items()}
        return self.trainer.state_tensors(copy) | counts

    def state(self) -> dict[str, Any]:
        return {}


def _windows(seed: int, count: int, events: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows, labels and event times of ``count`` windows of 1,000 ms each."""
    rng = np.random.default_rng(seed)
    return [
        (
            np.stack([rng.integers(0, 37, events), rng.integers(0, 23, events)], 1),
            (rng.random(events) < 0.3).astype(np.float32),
            1_000 * w + np.sort(rng.integers(0, 1_000, events)),
        )
        for w in range(count)
    ]


def _diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The largest difference of two tensors or arrays (snapshots hold arrays)."""
    x, y = torch.as_tensor(a), torch.as_tensor(b)
    return float((x.double() - y.double()).abs().max()) if x.numel() else 0.0


def equivalence(group: Group) -> dict[str, Any]:
    """Windows of one mini-batch each (the union of the ranks' shares is the whole window), for each
    sparse optimiser, with clipping, real-time inputs as of each event and a drift's
    forgetting: the sharded job against one process with the whole model, from the same state; its
    real-time features after every window (each rank folds every rank's events); and its snapshots
    (full, delta, full) joined on rank 0 against the single process's, the features included."""
    found: dict[str, Any] = {"loss": 0.0, "variance": 0.0, "auc": 0.0, "train_loss": 0.0, "state": 0.0}
    found["counts"] = 0.0
    found["copies"] = []
    for kind, delta_first in (("adagrad", False), ("adam", True), ("rowwise_adagrad", True)):
        settings = TrainSettings(
            device="cpu", batch_size=1 << 20, window_steps=1, grad_clip=0.05, sparse_optimizer=kind
        )
        torch.manual_seed(1)
        ref = Trainer(build_model(SPEC), settings, 0.1)
        sharded = ShardedTrainer(SPEC, settings, 0.1, group)
        sharded.load_state_tensors(ref.state_tensors())
        ref_features, features = _features(), _features()
        ref_copier = StateCopier(  # type: ignore[arg-type]
            _Learner(ref, ref_features), full_every=2, delta_first=delta_first
        )
        copier = ShardCopier(sharded, full_every=2, realtime=features.realtime, delta_first=delta_first)
        for w, (rows, labels, times) in enumerate(_windows(5, 3, 301)):
            mine = slice(0, 100) if group.rank == 0 else slice(100, None)
            whole = sharded.whole_stream(Stream.of(rows[mine], times[mine], labels[mine]))
            prepared = _realtime(features).window(whole, 1_000 * (w + 1))  # as `Learner.process` does
            ref_prepared = _realtime(ref_features).window(Stream.of(rows, times, labels), 1_000 * (w + 1))
            inputs, ref_inputs = sharded.own(prepared.inputs), ref_prepared.inputs
            evaluation, _ = sharded.score(rows[mine], labels[mine], inputs)
            expected, _ = ref.score(rows, labels, ref_inputs)
            if w == 1:  # after a drift: forget the rows the window trains
                ref.forget(rows, 0.3)
                sharded.forget(rows[mine], 0.3)
            step = sharded.train(rows[mine], labels[mine], 0.1, seed=w, inputs=inputs)
            ref_step = ref.train(rows, labels, 0.1, seed=w, inputs=ref_inputs)
            _fold(features, sharded, prepared)
            _fold(ref_features, ref, ref_prepared)
            for name, counted in ref_features.state().items():
                found["counts"] = max(found["counts"], float(np.abs(features.state()[name] - counted).max()))
            found["loss"] = max(found["loss"], abs(evaluation.loss - expected.loss))
            found["variance"] = max(found["variance"], abs(evaluation.variance - expected.variance))
            found["auc"] = max(found["auc"], abs(evaluation.auc - expected.auc))
            found["train_loss"] = max(found["train_loss"], abs(step.loss - ref_step.loss))
            copy_kind, part, whole_part = copier.copy()
            reference = ref_copier.copy()
            copies = [(copy_kind, part, reference.kind, reference.tensors)]
            if whole_part is not None or reference.full is not None:  # a full cut after its delta
                copies.append(("FULL", whole_part or {}, "FULL", reference.full or {}))
            for kind_, part_, ref_kind, ref_tensors in copies:
                parts = group.gather_bytes(encode_part(part_, {}))
                if parts is not None:
                    joined = assemble(kind_, [decode_part(p)[0] for p in parts])
                    same = joined.keys() == ref_tensors.keys()
                    worst = max(_diff(joined[k], v) for k, v in ref_tensors.items()) if same else None
                    found["copies"].append([kind_, ref_kind, same, worst])
        whole = ref.state_tensors()
        for name, tensor in sharded.state_tensors().items():
            expected_t = (
                whole[name] if whole[name].shape == tensor.shape else sharded.sharding.shard(whole[name])
            )
            found["state"] = max(found["state"], _diff(tensor, expected_t))
    return found


def uneven(group: Group) -> dict[str, Any]:
    """A window only rank 0 has events of, in several steps, that resets a row rank 1 owns (35: rank
    1's local row 17) and does not train."""
    settings = TrainSettings(device="cpu", batch_size=16, min_batch_size=16, window_steps=1)
    sharded = ShardedTrainer(SPEC, settings, 0.1, group)
    sharded.broadcast_dense()
    features = _features()
    before = Stream.of(np.array([[35, 1], [2, 1]]), np.array([0, 1]), np.array([1.0, 0.0]))
    _realtime(features).fold(_realtime(features).window(before, 1_000))  # every rank: the same everywhere
    ((rows, labels, times),) = _windows(7, 1, 100)
    rows[:, 0] %= 30
    times = times + 1_000
    if group.rank == 1:
        rows, labels, times = rows[:0], labels[:0], times[:0]
    whole = sharded.whole_stream(Stream.of(rows, times, labels))
    fresh = {0: np.array([35])}  # a row given to a new id (on every rank: they agree on fresh rows)
    prepared = _realtime(features).window(whole, 2_000, fresh)
    inputs = sharded.own(prepared.inputs)
    evaluation, _ = sharded.score(rows, labels, inputs)
    step = sharded.train(rows, labels, 0.1, seed=3, fresh=fresh if group.rank == 0 else {}, inputs=inputs)
    _realtime(features).reset(fresh)
    _realtime(features).fold(prepared)
    matured = int((whole.time_ms < 2_000 - 150).sum())
    out: dict[str, Any] = {"count": evaluation.count, "steps": step.steps, "loss": step.loss}
    out["matured"] = matured
    out["counts"] = {name: array.tolist() for name, array in features.state().items()}
    out["labels"] = float(labels.sum())
    if group.rank == 1:
        table = sharded.tables["linear.weights.user"].weight
        out["reset_linear"] = float(table[17].abs().sum())
        out["reset_state"] = float(sharded.sparse_opt.state[table]["sum"][17].sum())
        out["trained_rows"] = int((sharded.sparse_opt.state[table]["sum"] > 0).sum())
    out["dense"] = float(next(iter(sharded.dense_params.values())).detach().sum())
    return out


SCENARIOS: dict[str, Callable[[Group], dict[str, Any]]] = {"equivalence": equivalence, "uneven": uneven}


def main() -> None:
    name, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    group = Group.join("cpu", 120)
    try:
        found = SCENARIOS[name](group)
        torch.distributed.barrier()  # no rank tears its connections down while a peer still uses them
    finally:
        group.leave()
    (out / f"{name}-{group.rank}.json").write_text(json.dumps(found))


if __name__ == "__main__":
    main()
