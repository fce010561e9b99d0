"""Command line: ``stream-learner run | produce synthetic | demo | snapshots list|inspect | recommend
| config``.

Every flag shows the environment variable it can also come from; settings of the job itself come
from the TOML file and ``STREAM_LEARNER_<SECTION>__<KEY>`` variables (see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_learner.cli.common import EXIT_CONFIG, EXIT_OWNERSHIP, install_signal_handlers
from stream_learner.cli.demo import demo
from stream_learner.cli.reference import render
from stream_learner.cli.snapshots import recommend, snapshots
from stream_learner.config import Settings, load_settings
from stream_learner.errors import ConfigError, OwnershipLost
from stream_learner.runtime.app import App
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig

log = logging.getLogger("stream_learner")


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
            return snapshots(load_settings(args.config), args)
        if args.command == "recommend":
            return recommend(load_settings(args.config), args)
        if args.command == "config":
            print(render() if args.reference else _shown(load_settings(args.config)))
            return 0
        return demo(args)
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


def _run(settings: Settings, exit_when_idle: bool) -> int:
    app = App(settings)
    install_signal_handlers(app)
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


if __name__ == "__main__":
    sys.exit(main())
