"""``stream-learner serve``: the scoring service of one model, until SIGTERM or SIGINT.

It follows the model's snapshot topic and the learner's input topic (`ModelSubscriber`, configured
from the learner's own settings file: [kafka], [input], [validation], model.name, snapshot.topic and
the signature keys) and answers over HTTP (`stream_learner.serving.http`). The HTTP endpoint opens
first, so /healthz answers and /readyz says why no model is served while the subscriber looks for
one; a model that cannot be found within ``kafka.startup_timeout_seconds`` is logged with the reason,
and the service keeps looking.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from stream_learner.cli.common import form_topic
from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.metrics import REGISTRY
from stream_learner.runtime import heap
from stream_learner.serving import ModelSubscriber
from stream_learner.serving.api import Limits
from stream_learner.serving.http import ScoringServer
from stream_learner.snapshots import signing

log = logging.getLogger("stream_learner")

#: The interpreter's thread switch interval while serving: requests wait at most this long for a
#: background thread (following the topics, applying events) to give up the GIL (the default 5 ms
#: would show in the p99 of a request of one or two milliseconds).
SWITCH_INTERVAL_SECONDS = 0.0005


def serve_command(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until a signal; exit 0 then, 2 when the port cannot be had."""
    name, topic = settings.model.name, form_topic(settings, args)
    subscriber = ModelSubscriber(
        settings.kafka,
        topic,
        name,
        verify_key=signing.verify_key(settings.snapshot),
        require_signature=settings.snapshot.require_signature,
        follow_input=not args.no_follow_input,
        input_settings=settings,
    )
    limits = Limits(settings.validation.max_id_bytes, settings.validation.max_context_bytes)
    try:
        server = ScoringServer(subscriber, args.host, args.port, REGISTRY, limits, workers=args.workers)
    except OSError as exc:
        raise ConfigError(
            "--port", f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("received %s: stopping the scoring service", signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    with server:
        following = f"{topic}" + ("" if args.no_follow_input else f" and input {settings.input.topic}")
        log.info("scoring service for model %s on %s (following %s)", name, server.url, following)
        subscriber.start(wait=settings.kafka.startup_timeout_seconds)
        if subscriber.ready:
            log.info("ready: model %s v%s", name, subscriber.version)
        heap.settle()  # what start-up made (modules, compiled kernels) stays out of later collections
        try:
            stop.wait()
        finally:
            subscriber.close()
    return 0
