"""Ownership of a model: which of its instances is the active learner.

Each instance joins a consumer group on the model's (single-partition) snapshot topic, and the one
that holds its partition is the active learner; the others stand by (not ready, consuming nothing)
until it goes away, so partitions are never split between two diverging models. The logs say ACTIVE
or STANDBY, with the instance (``host-pid``) that owns the model.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.config import Settings
from stream_learner.kafka.clients import client_config

log = logging.getLogger(__name__)


class Lease:
    """Ownership of a model through a consumer group on its single-partition snapshot topic."""

    def __init__(self, settings: Settings, on_change: Callable[[bool], None] | None = None) -> None:
        self.topic = settings.snapshot.topic
        self.model = settings.model.name
        self.group = f"{settings.input.group_id}.owner.{settings.model.name}"
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self._on_change = on_change
        self.owned = False
        self.lost = False  # the lease went away unasked: no heartbeat reached the coordinator in time
        self._closing = False
        self._admin_config = client_config(settings.kafka)
        max_poll = settings.input.max_poll_interval_ms
        self._consumer = Consumer(
            {
                **client_config(settings.kafka),
                "client.id": f"{settings.kafka.client_id}.lease.{self.instance}",
                "group.id": self.group,
                "enable.auto.commit": False,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": min(10_000, max_poll),
                "heartbeat.interval.ms": 1_000,
                "max.poll.interval.ms": max_poll,
            }
        )
        self._consumer.subscribe(
            [self.topic], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer.incremental_assign(
                [TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING) for tp in partitions]
            )
            consumer.pause(partitions)  # ownership only: the lease never reads
            self._set(True)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            consumer.incremental_unassign(partitions)
            self._set(False)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.lost = self.lost or bool(partitions)
        self._revoked(consumer, partitions)

    def why_not_owned(self) -> str:
        """Why the lease is gone, for the log line the job leaves with."""
        if self.lost:
            return (
                "the model lease was lost: no heartbeat reached the group coordinator within the session "
                "timeout (is the broker reachable?)"
            )
        return "the model lease was revoked: another instance is taking over"

    def _set(self, owned: bool) -> None:
        if owned != self.owned:
            self.owned = owned
            if owned:
                log.info(
                    "ACTIVE: this instance (%s) owns model %s (lease group %s)",
                    self.instance,
                    self.model,
                    self.group,
                )
            elif self._closing:
                log.info("released the lease of model %s (instance %s)", self.model, self.instance)
            else:
                log.warning(
                    "lease lost: this instance (%s) no longer owns model %s", self.instance, self.model
                )
            if self._on_change:
                self._on_change(owned)

    def poll(self) -> bool:
        """Keep group membership alive; return whether this instance owns the model. Once the lease
        was lost it stays lost, even if the group hands the partition back: the session ended, so
        another instance may have owned the model meanwhile, and this one must restore again."""
        msg = self._consumer.poll(0)
        err = msg.error() if msg is not None else None
        if err is not None and err.fatal():
            raise KafkaException(err)
        return self.owned and not self.lost

    def wait(self, should_stop: Callable[[], bool], log_every: float = 30.0) -> bool:
        """Stand by until the lease is ours (True) or a stop is requested (False). The log names the
        owner every ``log_every`` seconds; while no instance holds the lease (a lone instance before
        its group's first assignment, a rebalance) it says once that it waits, and looks again each
        second. ``log_every`` infinite: no log, no look."""
        next_look, said_waiting = 0.0 if math.isfinite(log_every) else math.inf, False
        while not should_stop():
            self._consumer.poll(0.2)
            if self.owned:
                return True
            if time.monotonic() >= next_look:
                owner = self.owner()
                if owner is None:
                    if not said_waiting:
                        log.info("waiting for the lease of model %s (group %s)", self.model, self.group)
                        said_waiting = True
                    next_look = time.monotonic() + min(log_every, 1.0)
                    continue
                log.info(
                    "STANDBY: model %s is owned by %s; this instance (%s) takes over when it stops",
                    self.model,
                    owner,
                    self.instance,
                )
                next_look = time.monotonic() + log_every
        return False

    def owner(self) -> str | None:
        """Who holds the lease, as the group coordinator sees it (for the logs); None when no member
        holds it (the group is forming or rebalancing) or the coordinator did not say."""
        admin = AdminClient(self._admin_config)
        try:
            group = admin.describe_consumer_groups([self.group], request_timeout=5)[self.group].result(5)
        except (KafkaException, TimeoutError):
            return None
        for member in group.members:
            if member.assignment and member.assignment.topic_partitions:
                name = member.client_id.rpartition(".lease.")[2]
                return f"instance {name} (client {member.client_id} at {member.host})"
        return None

    def close(self) -> None:
        self._closing = True
        self._consumer.close()
