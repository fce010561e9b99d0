"""A lone instance, while its lease group forms, does not claim that another instance owns the
model: it used to log ``STANDBY: model ... is owned by another instance`` on its first start."""

from __future__ import annotations

import logging
import time

from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.kafka.lease import Lease
from tests.support import learner_settings


def test_a_lone_instance_says_it_waits_for_the_lease_then_takes_it(kafka_bootstrap, caplog):
    caplog.set_level(logging.INFO, logger="stream_learner.kafka.lease")
    settings = learner_settings(
        kafka_bootstrap, "unused", kafka={"extra": {"topic.metadata.refresh.interval.ms": "500"}}
    )
    topic = settings.snapshot.topic  # not there yet: the group forms and nobody holds the lease
    lease = Lease(settings)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    try:
        until = time.monotonic() + 2
        assert not lease.wait(lambda: time.monotonic() > until, log_every=0.5)
        waiting = [r.getMessage() for r in caplog.records]
        assert waiting and all(m.startswith("waiting for the lease of model") for m in waiting), waiting

        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        until = time.monotonic() + 60
        assert lease.wait(lambda: time.monotonic() > until, log_every=0.5)
    finally:
        lease.close()
        admin.delete_topics([topic])[topic].result(30)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("ACTIVE: this instance") for m in messages)
    assert not any("STANDBY" in m or "owned by" in m for m in messages), messages
