"""What the CLI's commands share: exit codes and the signal handlers of a running job."""

from __future__ import annotations

import logging
import signal

from stream_learner.runtime.app import App

log = logging.getLogger("stream_learner")

EXIT_NOT_FOUND = 1
EXIT_NOT_DELIVERED = 1  # produce: the broker did not acknowledge every event
EXIT_CONFIG = 2
EXIT_OWNERSHIP = 3


def install_signal_handlers(app: App) -> None:
    def handle(signum: int, _frame: object) -> None:
        log.info(
            "received %s: finishing the current window, publishing, committing", signal.Signals(signum).name
        )
        app.request_stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
