"""The command line's arguments: every command, its flags with their defaults and variables.

Global options (``--log-level``, ``--log-format``) are accepted before or after the command; a bad
value is a usage error (exit 2, with the usage line), never a traceback. Every flag shows its default
and, where it has one, the environment variable it can also come from. Every command that talks to
Kafka takes ``--bootstrap-server`` and ``--topic`` (and ``--model`` where it reads a model's
snapshots), which override the settings (`stream_learner.cli.common.with_flags`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from stream_learner import __version__
from stream_learner.cli.logs import LOG_FORMATS
from stream_learner.tools.synthetic import SyntheticConfig

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL_ENV = "STREAM_LEARNER_LOG_LEVEL"
LOG_FORMAT_ENV = "STREAM_LEARNER_LOG_FORMAT"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _env_flag(parser: argparse.ArgumentParser, flag: str, env: str, help: str, **kw: Any) -> None:
    """A flag whose default comes from an environment variable, shown in --help."""
    default = os.environ.get(env, kw.pop("default", None))
    parser.add_argument(flag, default=default, help=f"{help} [env: {env}]", **kw)


def _global_options(default: Any) -> argparse.ArgumentParser:
    """Options every command takes. The top level carries the defaults; after the command they are
    SUPPRESSed, so that a value given before the command is not reset by the command's parser."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default if default is argparse.SUPPRESS else os.environ.get(LOG_LEVEL_ENV, "INFO"),
        help=f"logging level [env: {LOG_LEVEL_ENV}]",
    )
    options.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default if default is argparse.SUPPRESS else os.environ.get(LOG_FORMAT_ENV, "text"),
        help=f"text lines, or one JSON object per line for a log collector [env: {LOG_FORMAT_ENV}]",
    )
    return options


def build() -> argparse.ArgumentParser:
    """The whole command line."""
    after = _global_options(argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="stream-learner",
        description="Online training of recommender models from Kafka.",
        formatter_class=_Formatter,
        parents=[_global_options(None)],
    )
    p.add_argument("--version", action="version", version=f"stream-learner {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(
            name, help=help, description=help, formatter_class=_Formatter, parents=[after]
        )
        return parser

    run = command(sub, "run", "run the learner as a streaming job")
    _env_flag(run, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file", type=Path)
    _kafka_flags(run, "input")
    run.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="stop once the input is caught up and idle and everything is committed",
    )
    _env_flag(
        run,
        "--workers",
        "STREAM_LEARNER_WORKERS",
        "ranks of a distributed job on this host, spawned through torch.distributed.run "
        "(1: one process; see docs/distributed.md)",
        type=int,
        default=1,
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="with --workers N > 1: restarts of the whole job after a rank fails (torchrun's)",
    )

    produce = command(sub, "produce", "produce events into the input topic")
    psub = produce.add_subparsers(dest="source", required=True, metavar="SOURCE")
    syn = command(psub, "synthetic", "events from a hidden latent-factor preference model")
    _env_flag(
        syn, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file (for kafka and input.topic)", type=Path
    )
    _kafka_flags(syn, "input")
    syn.add_argument("--events", type=int, default=10_000, help="how many events")
    syn.add_argument("--rate", type=float, default=1_000.0, help="events per second (of event time)")
    syn.add_argument(
        "--backfill",
        action="store_true",
        help="produce as fast as possible, with event times spaced 1/rate apart ending now",
    )
    syn.add_argument("--seed", type=int, default=0, help="seed of the hidden model and of the events")
    syn.add_argument("--users", type=int, default=SyntheticConfig.users, help="distinct users")
    syn.add_argument("--items", type=int, default=SyntheticConfig.items, help="distinct items")

    demo = command(sub, "demo", "local broker, synthetic events, the learner and its metrics, ~1 minute")
    _env_flag(
        demo,
        "--bootstrap-server",
        "STREAM_LEARNER_DEMO_BOOTSTRAP",
        "use this broker instead of the local one",
        dest="bootstrap",
    )
    demo.add_argument(
        "--delete-topics",
        action="store_true",
        help="allow deleting and recreating the demo.* topics on a broker that is not on this machine",
    )
    demo.add_argument("--seconds", type=float, default=40.0, help="how long events are produced")
    demo.add_argument("--rate", type=float, default=5_000.0, help="events per second")
    demo.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics, /healthz, /readyz")

    topics = command(sub, "topics", "the topics of the settings")
    tsub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = command(
        tsub,
        "create",
        "create the input topic, the snapshot topic and the dead-letter topic where missing, each with "
        "the configs it needs",
    )
    _env_flag(create, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file", type=Path)
    _kafka_flags(create, "input")
    create.add_argument(
        "--partitions", type=int, default=6, help="partitions of the input topic, when it is created"
    )

    snaps = command(sub, "snapshots", "the committed snapshots of a model")
    ssub = snaps.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = command(ssub, "list", "the newest snapshots, oldest first, verified")
    _model_flags(listing)
    listing.add_argument("--last", type=int, default=20, help="how many snapshots (newest)")
    _form_flag(listing)
    inspect = command(ssub, "inspect", "one snapshot's envelope, learner state and tensors, as JSON")
    _model_flags(inspect)
    inspect.add_argument("--version", type=int, help="the version to show (default: the newest)")
    _form_flag(inspect)
    out = command(ssub, "export", "a version as an ONNX model, for onnxruntime in other languages")
    _model_flags(out)
    out.add_argument("--format", choices=["onnx"], default="onnx", help="what to write")
    out.add_argument("--version", type=int, help="the version to export (default: the newest)")
    out.add_argument("--output", type=Path, required=True, help="the file to write")
    command(ssub, "keygen", "a new Ed25519 key pair for snapshot.signing_key and snapshot.verify_key")

    rec = command(sub, "recommend", "the best items for a user, from the newest committed model")
    _model_flags(rec)
    rec.add_argument("--user", required=True, help="user id")
    rec.add_argument("-k", type=int, default=10, help="how many items")
    rec.add_argument(
        "--candidates", help="comma-separated item ids (default: the recently active items in the snapshot)"
    )
    _form_flag(rec)

    srv = command(sub, "serve", "an HTTP/JSON scoring service that follows the model's snapshots and input")
    _model_flags(srv)
    srv.add_argument(
        "--input-topic", dest="input_topic", help="the learner's input topic (default: input.topic)"
    )
    _env_flag(srv, "--host", "STREAM_LEARNER_SERVE_HOST", "address to listen on", default="127.0.0.1")
    _env_flag(
        srv, "--port", "STREAM_LEARNER_SERVE_PORT", "port to listen on (0: any)", type=int, default=8080
    )
    srv.add_argument(
        "--workers",
        type=int,
        default=0,
        help="threads that answer requests (0: the thread that reads them; scoring holds the GIL)",
    )
    srv.add_argument(
        "--no-follow-input",
        action="store_true",
        help="score with the real-time features of each snapshot instead of keeping them current",
    )
    _form_flag(srv)

    back = command(sub, "rollback", "make the active learner return to an older version's model")
    _model_flags(back)
    what = back.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--to-version", type=int, help="restore this version's state; it is published as a new full version"
    )
    what.add_argument(
        "--accept",
        action="store_true",
        help="instead, accept the model as it is: the quality gate's reference starts over",
    )
    back.add_argument(
        "--wait",
        type=float,
        default=120.0,
        help="seconds to wait for the learner to confirm (0: do not wait)",
    )
    back.add_argument(
        "--expires-after",
        type=float,
        default=600.0,
        help="seconds after which the request lapses if no active instance has taken it",
    )

    again = command(sub, "replay", "train a version again from its inputs and compare it byte for byte")
    _model_flags(again)
    again.add_argument("--version", type=int, required=True, help="the version to replay")
    again.add_argument("--json", action="store_true", help="print the report as JSON")

    conf = command(sub, "config", "check the settings and print them (secrets hidden), or the reference")
    _env_flag(conf, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file", type=Path)
    conf.add_argument("--reference", action="store_true", help="print every setting as Markdown instead")
    return p


def _model_flags(parser: argparse.ArgumentParser) -> None:
    _env_flag(
        parser, "--config", "STREAM_LEARNER_CONFIG", "TOML settings file (kafka, snapshot.topic)", type=Path
    )
    _kafka_flags(parser, "snapshot")
    parser.add_argument("--model", help="model name (default: model.name from the settings)")


def _form_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--form",
        choices=["training", "serving"],
        default="training",
        help="read the training snapshots (snapshot.topic) or the serving form (serving.form_topic)",
    )


def _kafka_flags(parser: argparse.ArgumentParser, topic: str) -> None:
    """``--bootstrap-server`` and ``--topic``, the latter naming the input or the snapshot topic."""
    parser.add_argument(
        "--bootstrap-server", help="brokers, host:port[,host:port] (default: kafka.bootstrap_servers)"
    )
    parser.add_argument("--topic", dest=f"{topic}_topic", help=f"the {topic} topic (default: {topic}.topic)")


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a usage error (a bad value from the environment too) exits 2 with the usage."""
    parser = build()
    args = parser.parse_args(argv)
    if args.log_level not in LOG_LEVELS:  # from the environment: argparse checks only the command line
        parser.error(f"{LOG_LEVEL_ENV}={args.log_level}: choose from {', '.join(LOG_LEVELS)}")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"{LOG_FORMAT_ENV}={args.log_format}: choose from {', '.join(LOG_FORMATS)}")
    return args
