"""``stream-learner topics create``: the topics of the settings, created with the configs they need
(the broker does not create them, and the learner creates only those it writes to)."""

from __future__ import annotations

import argparse

from stream_learner.config import Settings
from stream_learner.kafka.admin import ensure_topics


def create_topics(settings: Settings, args: argparse.Namespace) -> int:
    """Create the input topic (``--partitions``), the snapshot topic and the dead-letter topic where
    they are missing, and say which were created and which were there."""
    created = ensure_topics(settings, input_partitions=args.partitions)
    for topic in (settings.input.topic, settings.snapshot.topic, settings.dead_letter.topic):
        print(f"{'created' if topic in created else 'exists '} {topic}")
    print(f"on {settings.kafka.bootstrap_servers}")
    return 0
