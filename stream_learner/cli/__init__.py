"""Command line: ``stream-learner run | produce synthetic | demo | topics create |
snapshots list|inspect|export|keygen | recommend | serve | rollback | replay | config``.

The arguments are declared in `stream_learner.cli.parser` (each flag shows its default and the
environment variable it can also come from); settings of the job itself come from the TOML file and
``STREAM_LEARNER_<SECTION>__<KEY>`` variables (see docs/configuration.md).

The commands that train (`TRAINING`) import torch when they run, not here: an installation without
the ``train`` extra (a serving replica) runs every other command, and is told what to install when
asked to train.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence

from stream_learner.cli import logs
from stream_learner.cli.common import (
    EXIT_CONFIG,
    EXIT_NOT_DELIVERED,
    EXIT_OWNERSHIP,
    EXIT_UNAVAILABLE,
    install_signal_handlers,
    watch_leaving,
    with_flags,
)
from stream_learner.cli.parser import parse
from stream_learner.cli.reference import render
from stream_learner.cli.rollback import rollback
from stream_learner.cli.serve import serve_command
from stream_learner.cli.snapshots import keygen, recommend, snapshots
from stream_learner.cli.topics import create_topics
from stream_learner.config import Settings, load_settings
from stream_learner.errors import BrokerError, ConfigError, OwnershipLost
from stream_learner.tools.produce import produce_synthetic
from stream_learner.tools.synthetic import SyntheticConfig

log = logging.getLogger("stream_learner")

#: Commands that train a model, with torch (the ``train`` extra).
TRAINING = ("run", "demo", "replay")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(list(argv) if argv is not None else None)
    logs.configure(args.log_level, args.log_format)
    if args.command in TRAINING and importlib.util.find_spec("torch") is None:
        print(
            f"stream-learner: {args.command} trains a model, which needs torch: "
            "pip install 'stream-learner[train]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    settings: Settings | None = None
    try:
        if args.command == "run":
            return _run(with_flags(load_settings(args.config), args), args)
        if args.command == "snapshots" and args.action == "keygen":
            return keygen()
        if args.command in COMMANDS:
            settings = with_flags(load_settings(args.config), args)
            return COMMANDS[args.command](settings, args)
        if args.command == "config":
            print(render() if args.reference else _shown(load_settings(args.config)))
            return 0
        from stream_learner.cli.demo import demo  # torch

        return demo(args)
    except ConfigError as err:
        print(f"stream-learner: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except OwnershipLost as err:
        log.error("stopping: %s", err)
        return EXIT_OWNERSHIP
    except BrokerError as err:
        if settings is None:  # the job: it has commits to resume from
            log.error("stopping: %s; a restart resumes from the last commit", err)
        else:  # a command that only reads or writes a little
            log.error("failed: %s (brokers %s)", err, settings.kafka.bootstrap_servers)
        return EXIT_UNAVAILABLE


def _shown(settings: Settings) -> str:
    """The settings as JSON. Secrets are secret by type (`SecretStr`, credentials of URLs, librdkafka
    extras whose name says they are secret), so they show masked."""
    return json.dumps(settings.model_dump(mode="json"), indent=2)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    """One process; one rank of a job under torchrun; or a job of ``--workers`` ranks here."""
    from stream_learner.runtime.app import App  # torch
    from stream_learner.runtime.distributed.launch import launch, launched
    from stream_learner.runtime.distributed.rank import RankApp

    if not launched() and args.workers > 1:
        return launch(settings, args.workers, args.max_restarts, rank_argv(args))
    app = RankApp(settings) if launched() else App(settings)
    install_signal_handlers(app)
    watching = watch_leaving(app)
    try:
        summary = app.run(exit_when_idle=args.exit_when_idle)
    finally:
        watching.set()
    log.info("stopped: %s", summary.line())
    return 0


def rank_argv(args: argparse.Namespace) -> list[str]:
    """The command line of each rank of a job that ``run --workers N`` launches: this one's, less
    the launching flags."""
    options = ["--log-level", args.log_level, "--log-format", args.log_format]
    flags = {
        "--config": args.config,
        "--bootstrap-server": args.bootstrap_server,
        "--topic": args.input_topic,
    }
    given = [str(part) for flag, value in flags.items() if value for part in (flag, value)]
    return [*options, "run", *given, *(["--exit-when-idle"] * args.exit_when_idle)]


def _produce(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 only when the broker acknowledged every event; 1 with what was delivered otherwise."""
    topic = settings.input.topic
    config = SyntheticConfig(users=args.users, items=args.items, seed=args.seed)
    try:
        stats = produce_synthetic(settings.kafka, topic, args.events, args.rate, args.backfill, config)
    except BrokerError as err:
        print(f"stream-learner: nothing produced: {err}", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    if stats.shortfall:
        print(f"stream-learner: {topic}: {stats.shortfall}", file=sys.stderr)
        return EXIT_NOT_DELIVERED
    print(
        f"delivered {stats.deliveries.delivered} events to {topic} in {stats.seconds:.1f}s "
        f"(best possible AUC {stats.best_auc:.4f})"
    )
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from stream_learner.cli.replay import replay_command  # torch: the version is trained again

    return replay_command(settings, args)


#: Commands that read settings and talk to Kafka, and what each runs.
COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "produce": _produce,
    "topics": create_topics,
    "snapshots": snapshots,
    "recommend": recommend,
    "serve": serve_command,
    "rollback": rollback,
    "replay": _replay,
}


if __name__ == "__main__":
    sys.exit(main())
