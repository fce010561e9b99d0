"""Training speed: samples per second of `Trainer.train` for each model at mini-batches of 1k, 4k, 16k,
and the cost of a window of 1k, 10k and 100k events with adapted and with fixed mini-batches.

The events are synthetic, mapped to rows as the learner does (default table sizes: 2^18 rows for
users and items, two context fields); one pass per window. The first window warms up (allocations,
optimiser state) and is not timed. On CUDA the timing includes the host-to-device copies and ends
with a synchronisation (the trainer reads the loss back).

    python -m benchmarks.train_speed                              # CPU, fp32
    python -m benchmarks.train_speed --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.results import record
from stream_learner.config import FeatureSettings, ModelSettings, TrainSettings
from stream_learner.learning.features import FeatureMapper
from stream_learner.learning.models import MODELS, ModelSpec, build_model
from stream_learner.learning.realtime import Stream
from stream_learner.learning.trainer import Trainer
from stream_learner.tools.synthetic import SyntheticConfig, SyntheticStream

CONTEXT = ["device", "section"]
BATCHES = (1024, 4096, 16384)


def synthetic(events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, FeatureMapper]:
    """Rows, labels and the real-time inputs (as of each event, as the learner computes them for a
    window) of ``events`` synthetic events, and the mapper."""
    mapper = FeatureMapper.from_settings(ModelSettings(context_fields=CONTEXT), FeatureSettings())
    batch = SyntheticStream(SyntheticConfig(users=100_000, items=20_000)).batch(events, 0, 1)
    events_ = batch.events(CONTEXT)
    rows = mapper.rows(events_)
    assert mapper.realtime is not None  # the default model has real-time inputs
    inputs = mapper.realtime.window(mapper.stream(rows, events_), int(events_.timestamp_ms.max())).inputs
    return rows, batch.label, inputs, mapper


def samples_per_second(kind: str, batch_size: int, device: str, precision: str, events: int) -> float:
    rows, labels, inputs, mapper = synthetic(events)
    spec = ModelSpec(kind, mapper.specs(), extra=mapper.spec_extra())  # with the real-time inputs
    torch.manual_seed(0)
    settings = TrainSettings(  # training alone: every core (the job leaves one to polling)
        device=device,
        batch_size=batch_size,
        min_batch_size=batch_size,  # this mini-batch size, whatever the window's size
        precision=precision,
        threads=os.cpu_count() or 1,  # type: ignore[arg-type]
    )
    trainer = Trainer(build_model(spec), settings, lr=0.2)
    warm = min(len(labels), 4 * batch_size)
    trainer.train(rows[:warm], labels[:warm], 0.2, seed=0, inputs=None if inputs is None else inputs[:warm])
    started = time.perf_counter()
    result = trainer.train(rows, labels, 0.2, seed=1, inputs=inputs)
    seconds = time.perf_counter() - started
    assert result.applied, "the benchmark window was rolled back"
    return len(labels) / seconds


WINDOWS = (1_000, 10_000, 100_000)


def feature_cost(users: int) -> dict[str, dict[str, float]]:
    """Seconds and events/s of the real-time features per window of each size in WINDOWS (`window`,
    then `fold`: what the learner adds to every window), on a synthetic stream of ``users`` users and
    20,000 items, windows of consecutive events one second of event time each."""
    mapper = FeatureMapper.from_settings(ModelSettings(), FeatureSettings())
    stream = SyntheticStream(SyntheticConfig(users=users, items=20_000)).batch(250_000, 0, 1)
    events = stream.events([])
    rows = mapper.rows(events)
    out = {}
    for n in WINDOWS:
        realtime = mapper.from_settings(ModelSettings(), FeatureSettings()).realtime
        assert realtime is not None
        repeats = max(2, 200_000 // n // 4)
        started = 0.0
        for r in range(repeats + 1):  # the first (a model's first window) is not timed
            if r == 1:
                started = time.perf_counter()
            part = slice(r * n % 200_000, r * n % 200_000 + n)
            window = mapper.stream(rows[part], events.take(part))
            window = Stream(window.rows, np.full(n, 1000 * r) + np.arange(n) * 1000 // n, window.label)
            realtime.fold(realtime.window(window, 1000 * (r + 1)))
        seconds = (time.perf_counter() - started) / repeats
        out[str(n)] = {"seconds": round(seconds, 5), "events_per_second": round(n / seconds)}
    return out


def window_cost(
    kind: str, device: str, adaptive: bool, closed_form: bool = True
) -> dict[str, dict[str, float]]:
    """Seconds and events/s of `Trainer.train` per window of each size in WINDOWS, with the default
    mini-batches (adapted to the window: train.min_batch_size, window_steps) or fixed ones of
    train.batch_size (min_batch_size = batch_size), one training thread, count inputs as the
    learner feeds them. Windows are consecutive slices of one synthetic stream; the first is not
    timed. ``closed_form=False`` makes the model's steps go through autograd (as the FM's did before
    its closed form), for comparison in the same run."""
    rows, labels, inputs, mapper = synthetic(250_000)
    torch.manual_seed(0)
    fixed = {} if adaptive else {"min_batch_size": TrainSettings().batch_size}
    settings = TrainSettings(device=device, threads=1, **fixed)  # type: ignore[arg-type]
    spec = ModelSpec(kind, mapper.specs(), extra=mapper.spec_extra())
    trainer = Trainer(build_model(spec), settings, lr=0.1)
    if not closed_form:
        trainer.model.closed_form = lambda *args: None  # type: ignore[method-assign]
    trainer.train(rows[:4096], labels[:4096], 0.1, seed=0, inputs=inputs[:4096])
    out = {}
    for n in WINDOWS:
        repeats = max(1, 200_000 // n // 4)
        started = time.perf_counter()
        for r in range(repeats):
            lo = 4096 + (r * n) % 200_000
            result = trainer.train(
                rows[lo : lo + n], labels[lo : lo + n], 0.1, seed=r, inputs=inputs[lo : lo + n]
            )
        seconds = (time.perf_counter() - started) / repeats
        out[str(n)] = {
            "seconds": round(seconds, 5),
            "events_per_second": round(n / seconds),
            "steps": result.steps,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--events", type=int, default=0, help="events per timed window (0: 64k CPU, 1M GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    events = args.events or (1 << 20 if device.type == "cuda" else 1 << 16)
    results: dict[str, dict[str, float]] = {}
    for kind in sorted(MODELS):
        results[kind] = {}
        for batch_size in BATCHES:
            rate = samples_per_second(kind, batch_size, args.device, args.precision, events)
            results[kind][str(batch_size)] = round(rate)
            print(f"{kind:9s} batch {batch_size:6d}: {rate:12,.0f} samples/s", flush=True)
    cost = {
        kind: {mode: window_cost(kind, args.device, mode == "adaptive") for mode in ("adaptive", "fixed")}
        for kind in ("fm", "dnn")
    }
    cost["fm through autograd"] = {"adaptive": window_cost("fm", args.device, True, closed_form=False)}
    features = {f"{users} users": feature_cost(users) for users in (5_000, 100_000)}
    for users, sizes in features.items():
        line = ", ".join(f"{n}: {v['seconds'] * 1000:.1f} ms" for n, v in sizes.items())
        print(f"real-time features, {users}, per window {line}", flush=True)
    for kind, modes in cost.items():
        for mode, sizes in modes.items():
            line = ", ".join(
                f"{n}: {v['seconds'] * 1000:.1f} ms ({v['steps']} steps)" for n, v in sizes.items()
            )
            print(f"{kind} {mode} per window {line}", flush=True)
    name = "train_speed_cuda" if device.type == "cuda" else "train_speed_cpu"
    record(
        name,
        {
            "samples_per_second": results,
            "device": args.device,
            "precision": args.precision,
            "events_per_window": events,
            "torch_threads": torch.get_num_threads(),
            "window_cost": cost,
            "feature_cost": features,
            "feature_cost_note": "RealtimeFeatures.window then fold per window (what the learner "
            "adds to Trainer.train for every window), 20,000 items",
            "window_cost_note": "Trainer.train per window, one thread, default settings: mini-batches "
            "adapted to the window (adaptive) or fixed at train.batch_size (fixed); 'fm through "
            "autograd': the FM's steps without its closed-form gradients",
        },
    )


if __name__ == "__main__":
    main()
