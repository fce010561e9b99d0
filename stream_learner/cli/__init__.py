"""Command line: ``stream-learner run | produce synthetic | demo | snapshots list|inspect | recommend
| config``.

Every flag shows the environment variable it can also come from; settings of the job itself come
from the TOML file and ``STREAM_LEARNER_<SECTION>__<KEY>`` variables (see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from stream_learner.cli.reference import render
from stream_learner.config import Settings, load_settings
from stream_learner.errors import ConfigError, OwnershipLost, SnapshotError
from stream_learner.kafka.admin import ensure_topics
from stream_learner.runtime.app import App, Summary
from stream_learner.serving.subscriber import ModelSubscriber
from stream_learner.snapshots.format import Snapshot, describe_payload
from stream_learner.snapshots.log import Entry, SnapshotLog
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig

log = logging.getLogger("stream_learner")

EXIT_NOT_FOUND = 1
EXIT_CONFIG = 2
EXIT_OWNERSHIP = 3


def _env_flag(parser: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    """A flag whose default comes from an environment variable, shown in --help."""
    default = os.environ.get(env, kw.pop("default", None))
    parser.add_argument(flag, default=default, help=f"{help} [env: {env}]", **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stream-learner", description="Online training of recommender models from Kafka."
    )
    _env_flag(p, "--log-level", "STREAM_LEARNER_LOG_LEVEL", "logging level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the learner as a streaming job")
    _env_flag(run, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file", type=Path)
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="stop once the input is caught up and idle and everything is committed",
    )

    produce = sub.add_parser("produce", help="produce events into the input topic")
    psub = produce.add_subparsers(dest="source", required=True)
    syn = psub.add_parser("synthetic", help="events from a hidden latent-factor preference model")
    _env_flag(
        syn, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file (for kafka and input.topic)", type=Path
    )
    syn.add_argument("--events", type=int, default=10_000, help="how many events")
    syn.add_argument("--rate", type=float, default=1_000.0, help="events per second (of event time)")
    syn.add_argument(
        "--backfill",
        action="store_true",
        help="produce as fast as possible, with event times spaced 1/rate apart ending now",
    )
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--users", type=int, default=SyntheticConfig.users)
    syn.add_argument("--items", type=int, default=SyntheticConfig.items)

    demo = sub.add_parser(
        "demo", help="local broker, synthetic events, the learner and its metrics, ~1 minute"
    )
    _env_flag(
        demo, "--bootstrap", "STREAM_LEARNER_DEMO_BOOTSTRAP", "use this broker instead of the local one"
    )
    demo.add_argument("--seconds", type=float, default=40.0, help="how long events are produced")
    demo.add_argument("--rate", type=float, default=5_000.0, help="events per second")
    demo.add_argument("--metrics-port", type=int, default=9464)

    snaps = sub.add_parser("snapshots", help="the committed snapshots of a model")
    ssub = snaps.add_subparsers(dest="action", required=True)
    listing = ssub.add_parser("list", help="the newest snapshots, oldest first, verified")
    _model_flags(listing)
    listing.add_argument("--last", type=int, default=20, help="how many snapshots (newest)")
    inspect = ssub.add_parser("inspect", help="one snapshot's envelope, learner state and tensors, as JSON")
    _model_flags(inspect)
    inspect.add_argument("--version", type=int, help="the version to show (default: the newest)")

    rec = sub.add_parser("recommend", help="the best items for a user, from the newest committed model")
    _model_flags(rec)
    rec.add_argument("--user", required=True, help="user id")
    rec.add_argument("-k", type=int, default=10, help="how many items")
    rec.add_argument(
        "--candidates", help="comma-separated item ids (default: the recently active items in the snapshot)"
    )

    conf = sub.add_parser(
        "config", help="check the settings and print them (secrets hidden), or the reference"
    )
    _env_flag(conf, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file", type=Path)
    conf.add_argument("--reference", action="store_true", help="print every setting as Markdown instead")
    return p


def _model_flags(parser: argparse.ArgumentParser) -> None:
    _env_flag(
        parser, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file (kafka, snapshot.topic)", type=Path
    )
    parser.add_argument("--model", help="model name (default: model.name from the settings)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "run":
            return _run(load_settings(args.config), args.exit_when_idle)
        if args.command == "produce":
            return _produce(load_settings(args.config), args)
        if args.command == "snapshots":
            return _snapshots(load_settings(args.config), args)
        if args.command == "recommend":
            return _recommend(load_settings(args.config), args)
        if args.command == "config":
            print(render() if args.reference else _shown(load_settings(args.config)))
            return 0
        return _demo(args)
    except ConfigError as err:
        print(f"stream-learner: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OwnershipLost as err:
        log.error("stopping: %s", err)
        return EXIT_OWNERSHIP


def _shown(settings: Settings) -> str:
    """The settings as JSON; secrets hidden, also librdkafka extras whose name says they are secret."""
    data = settings.model_dump(mode="json")
    extra = data["kafka"]["extra"]
    for key in extra:
        if any(word in key for word in ("password", "secret", "token", "key")):
            extra[key] = "**********"
    return json.dumps(data, indent=2)


def _install_signal_handlers(app: App) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info(
            "received %s: finishing the current window, publishing, committing", signal.Signals(signum).name
        )
        app.request_stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _run(settings: Settings, exit_when_idle: bool) -> int:
    app = App(settings)
    _install_signal_handlers(app)
    summary = app.run(exit_when_idle=exit_when_idle)
    log.info("stopped: %s", summary)
    return 0


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    config = SyntheticConfig(users=args.users, items=args.items, seed=args.seed)
    stats = produce_synthetic(
        settings.kafka, settings.input.topic, args.events, args.rate, args.backfill, config
    )
    print(
        f"produced {stats.events} events to {settings.input.topic} in {stats.seconds:.1f}s "
        f"(best possible AUC {stats.best_auc:.4f})"
    )
    return 0


# -- snapshots and serving ------------------------------------------------------------------------
def _snapshot_log(settings: Settings, args: argparse.Namespace) -> SnapshotLog:
    return SnapshotLog(settings.kafka, settings.snapshot.topic, args.model or settings.model.name)


def _snapshots(settings: Settings, args: argparse.Namespace) -> int:
    with _snapshot_log(settings, args) as snapshots:
        if args.action == "list":
            entries = list(itertools.islice(snapshots.newest_first(), args.last))
            for entry in reversed(entries):
                print(_entry_line(entry))
            if not entries:
                print(f"no snapshots of {snapshots.key.decode()} on {settings.snapshot.topic}")
            return 0
        for entry in snapshots.newest_first():
            snap = entry.snapshot
            if snap is not None and args.version in (None, snap.meta.version):
                try:
                    print(json.dumps(_inspect(snap), indent=2))
                except (SnapshotError, ValueError) as err:
                    print(f"stream-learner: v{snap.meta.version} cannot be shown: {err}", file=sys.stderr)
                    return EXIT_NOT_FOUND
                return 0
    print(f"stream-learner: no verified snapshot {args.version or ''} found", file=sys.stderr)
    return EXIT_NOT_FOUND


def _entry_line(entry: Entry) -> str:
    if entry.snapshot is None:
        return f"@{entry.offset!s:<8} refused: {entry.error}"
    m = entry.snapshot.meta
    ranges = " ".join(f"{r.partition}:[{r.first},{r.last}]" for r in m.offsets)
    base = f"<-v{m.base_version}" if m.base_version is not None else ""
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(m.created_ms / 1000))
    return (
        f"@{entry.offset!s:<8} v{m.version:<6} {m.kind.lower():5} {base:9} {created}Z "
        f"{len(entry.snapshot.payload):>11} B  windows [{m.window_start_ms}, {m.window_end_ms})  "
        f"offsets {ranges}"
    )


def _inspect(snap: Snapshot) -> dict[str, Any]:
    m = snap.meta
    state = m.state_dict()
    learner = state.get("learner", {})
    if isinstance(learner.get("recent_items"), list):
        learner["recent_items"] = f"{len(learner['recent_items'])} item ids"
    return {
        **{k: v for k, v in vars(m).items() if k not in ("spec", "state", "offsets")},
        "offsets": [vars(r) for r in m.offsets],
        "spec": json.loads(m.spec),
        "state": state,
        "payload_bytes": len(snap.payload),
        "payload_sha256": hashlib.sha256(snap.payload).hexdigest(),
        "tensors": {
            name: [dtype, list(shape)] for name, (dtype, shape) in describe_payload(snap.payload).items()
        },
    }


def _recommend(settings: Settings, args: argparse.Namespace) -> int:
    name = args.model or settings.model.name
    with ModelSubscriber(settings.kafka, settings.snapshot.topic, name) as subscriber:
        if subscriber.refresh() is None:
            print(
                f"stream-learner: no usable snapshot of {name} on {settings.snapshot.topic}", file=sys.stderr
            )
            return EXIT_NOT_FOUND
        candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
        best = subscriber.recommend(args.user, args.k, candidates)
    print(f"model {name} v{subscriber.version}, user {args.user}:")
    for rank, (item, score) in enumerate(best, 1):
        print(f"{rank:>3}  {item}  {score:.6f}")
    return 0


# -- demo ------------------------------------------------------------------------------------------
def _local_broker() -> str:
    """Start (or reuse) the repository's local broker and return its address."""
    here = Path(__file__).resolve().parent
    for root in (Path.cwd(), *Path.cwd().parents, here.parent):
        script = root / "deploy" / "kafka" / "kafka.sh"
        if script.exists():
            subprocess.run([str(script), "start"], check=True, stdout=sys.stderr)
            out = subprocess.run([str(script), "bootstrap"], check=True, capture_output=True, text=True)
            return out.stdout.strip()
    raise ConfigError("--bootstrap", "no local broker script (deploy/kafka/kafka.sh) found; pass --bootstrap")


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete the topics that exist and wait until they are gone (deletion completes asynchronously)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = [n for n in names if n in admin.list_topics(timeout=30).topics]
    for future in admin.delete_topics(existing, operation_timeout=30).values() if existing else []:
        future.result(30)
    for _ in range(50):
        if not set(names) & set(admin.list_topics(timeout=30).topics):
            break
        time.sleep(0.2)


def _demo(args: argparse.Namespace) -> int:
    bootstrap = args.bootstrap or _local_broker()
    settings = Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "input": {"topic": "demo.events", "group_id": "demo"},
            "window": {"size_seconds": 4.0, "allowed_lateness_seconds": 0.5, "idle_timeout_seconds": 2.0},
            "dead_letter": {"topic": "demo.dead-letters"},
            "snapshot": {"topic": "demo.snapshots", "every_windows": 2},
            "model": {"name": "demo", "user_buckets": 1 << 14, "item_buckets": 1 << 12},
            "metrics": {"port": args.metrics_port},
        }
    )
    _delete_topics(bootstrap, ["demo.events", "demo.snapshots", "demo.dead-letters"])  # a fresh start
    ensure_topics(settings, input_partitions=3)
    logging.getLogger("stream_learner").setLevel(logging.WARNING)
    stop = threading.Event()
    events = int(args.seconds * args.rate)
    produced: dict[str, Any] = {}
    producer = threading.Thread(
        target=lambda: produced.update(
            stats=produce_synthetic(settings.kafka, settings.input.topic, events, args.rate, stop=stop)
        ),
        daemon=True,
    )
    app = App(settings)
    _install_signal_handlers(app)
    print(
        f"demo: broker {bootstrap}; producing {events} events at {args.rate:.0f}/s; "
        f"metrics on http://127.0.0.1:{args.metrics_port}/metrics"
    )
    producer.start()
    last = {"events": 0, "t": 0.0}

    def progress(s: Summary) -> None:
        now = time.monotonic()
        rate = (s.events - last["events"]) / (now - last["t"]) if last["t"] else 0.0
        last.update(events=s.events, t=now)
        print(
            f"  {s.events:>8} events  {rate:>8.0f}/s  windows {s.windows_trained:>3}  "
            f"val_loss {s.last_validation_loss:.4f}  auc {s.last_validation_auc:.4f}  "
            f"snapshots {s.snapshots:>3}  lag {s.lag}",
            flush=True,
        )

    summary = app.run(exit_when_idle=True, on_progress=progress)
    stop.set()
    producer.join()
    stats = produced.get("stats")
    print("\ndemo summary")
    print(f"  windows trained        {summary.windows_trained}")
    print(
        f"  validation loss        first {summary.first_validation_loss:.4f}"
        f" -> last {summary.last_validation_loss:.4f}"
    )
    print(
        f"  validation AUC (last)  {summary.last_validation_auc:.4f}"
        + (f"   (best possible {stats.best_auc:.4f})" if stats else "")
    )
    print(f"  snapshots published    {summary.snapshots} (model version {summary.version}) to demo.snapshots")
    print(f"  metrics were served at {summary.metrics_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
