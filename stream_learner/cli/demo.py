"""``stream-learner demo``: a local broker, synthetic events, the learner and its metrics."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stream_learner.cli.common import install_signal_handlers
from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kafka.admin import delete_topics, ensure_topics
from stream_learner.runtime.app import App, Summary
from stream_learner.tools.produce import produce_synthetic


def _local_broker() -> str:
    """Start (or reuse) the repository's local broker and return its address."""
    here = Path(__file__).resolve().parent
    for root in (Path.cwd(), *Path.cwd().parents, here.parents[1]):
        script = root / "deploy" / "kafka" / "kafka.sh"
        if script.exists():
            subprocess.run([str(script), "start"], check=True, stdout=sys.stderr)
            out = subprocess.run([str(script), "bootstrap"], check=True, capture_output=True, text=True)
            return out.stdout.strip()
    raise ConfigError(
        "--bootstrap-server", "no local broker script (deploy/kafka/kafka.sh) found; pass --bootstrap-server"
    )


DEMO_TOPICS = ["demo.events", "demo.snapshots", "demo.dead-letters"]


def on_this_machine(bootstrap: str) -> bool:
    """Whether every broker address is a loopback one (the local broker, or one started by hand)."""
    for address in bootstrap.split(","):
        host = address.strip().rsplit(":", 1)[0].strip("[]")
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            if host != "localhost":
                return False
    return True


def demo(args: argparse.Namespace) -> int:
    if args.bootstrap and not args.delete_topics and not on_this_machine(args.bootstrap):
        raise ConfigError(
            "--bootstrap-server",
            f"the demo deletes and recreates {', '.join(DEMO_TOPICS)}, and {args.bootstrap} is not on "
            "this machine; pass --delete-topics if that is what you want",
        )
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
    delete_topics(settings.kafka, DEMO_TOPICS)  # a fresh start
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
    install_signal_handlers(app)
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
