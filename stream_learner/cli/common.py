"""What the CLI's commands share: exit codes, the settings with the command line's flags on top, the
signal handlers of a running job, and the deadline by which a leaving job is gone."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from typing import Protocol

from pydantic import ValidationError

from stream_learner.config import ModelSettings, Settings
from stream_learner.errors import ConfigError

log = logging.getLogger("stream_learner")

EXIT_NOT_FOUND = 1
EXIT_NOT_DELIVERED = 1  # produce: the broker did not acknowledge every event
EXIT_CONFIG = 2
EXIT_OWNERSHIP = 3
#: Kafka failed the running job (a commit stalled, a transactional call failed), or it did not
#: leave within ``delivery.shutdown_timeout_seconds``: a restart resumes from the last commit.
EXIT_UNAVAILABLE = 4


def with_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the flags of a command that talks to Kafka on top: ``--bootstrap-server``
    (kafka.bootstrap_servers), ``--topic`` (input.topic or snapshot.topic, whichever the command
    reads) and ``--model`` (model.name). Says so when the broker is nobody's choice but the default."""
    kafka, given = settings.kafka, vars(args)
    if given.get("bootstrap_server"):
        kafka = kafka.model_copy(update={"bootstrap_servers": given["bootstrap_server"]})
    elif "bootstrap_servers" not in kafka.model_fields_set:
        log.warning(
            "no --bootstrap-server, --config or STREAM_LEARNER_KAFKA__BOOTSTRAP_SERVERS names the "
            "brokers: using the default, %s",
            kafka.bootstrap_servers,
        )
    update: dict[str, object] = {"kafka": kafka}
    for section in ("input", "snapshot"):
        if given.get(f"{section}_topic"):
            update[section] = getattr(settings, section).model_copy(
                update={"topic": given[f"{section}_topic"]}
            )
    if given.get("model"):
        try:
            update["model"] = ModelSettings.model_validate(
                {**settings.model.model_dump(), "name": args.model}
            )
        except ValidationError as exc:
            raise ConfigError("--model", exc.errors()[0]["msg"]) from None
    return settings.model_copy(update=update)


class Job(Protocol):
    """A running job: `stream_learner.runtime.app.App`, or one rank of a distributed job
    (`stream_learner.runtime.distributed.rank.RankApp`)."""

    settings: Settings

    def request_stop(self) -> None: ...
    @property
    def leaving_since(self) -> float | None: ...


def form_topic(settings: Settings, args: argparse.Namespace) -> str:
    """The topic of the form ``--form`` names: the training snapshots, or the serving form."""
    if getattr(args, "form", "training") == "serving":
        return settings.serving.form_topic_for(settings.snapshot.topic)
    return settings.snapshot.topic


def install_signal_handlers(app: Job) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info(
            "received %s: finishing the current window, publishing, committing (at most %.0f s)",
            signal.Signals(signum).name,
            app.settings.delivery.shutdown_timeout_seconds,
        )
        app.request_stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def watch_leaving(app: Job) -> threading.Event:
    """End the process (exit code 4, the threads' stacks on stderr) when the job began to leave
    (a stop request or a failure) more than ``delivery.shutdown_timeout_seconds`` ago and is still
    there: a thread stuck in a Kafka call never holds it up longer. Set the event returned once
    `App.run` is over."""
    budget = app.settings.delivery.shutdown_timeout_seconds
    over = threading.Event()

    def watch() -> None:
        while not over.wait(0.5):
            since = app.leaving_since
            if since is not None and time.monotonic() - since > budget:
                log.error(
                    "the job did not leave within %.0f s (delivery.shutdown_timeout_seconds); "
                    "exiting now, without a final commit",
                    budget,
                )
                faulthandler.dump_traceback(all_threads=True)
                logging.shutdown()
                sys.stderr.flush()
                os._exit(EXIT_UNAVAILABLE)

    threading.Thread(target=watch, name="leave-deadline", daemon=True).start()
    return over
