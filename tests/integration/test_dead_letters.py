"""Dead letters through the real broker: invalid and late events go to the dead-letter topic with their
original bytes, key and headers plus headers saying why and where from; nothing else is lost; their
offsets are committed like any other; and 10,000 fuzzed payloads do not stop the job."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

from stream_learner.ingest.codec import encode_event
from tests.ingest_fuzz import NOW_MS, malformed, reference
from tests.ingest_support import event, produce
from tests.support import (
    AppThread,
    committed_offsets,
    end_offsets,
    learner_settings,
    read_all,
    read_snapshots,
    scrape,
    wait_for,
)

PARTITIONS = 2


def _headers(msg) -> dict[str, bytes]:
    return dict(msg.headers() or [])


def test_invalid_and_late_events_are_dead_lettered_as_they_came_and_committed(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(
        kafka_bootstrap,
        topic,
        window={"late_policy": "dead_letter", "idle_timeout_seconds": 1.0},
        model={"kind": "logistic"},
    )
    t0 = (int(time.time()) - 60) * 1000  # a second boundary, a minute ago
    invalid = {
        "empty_id": encode_event(event(user_id="", timestamp=t0)),
        "bad_label": encode_event(event(label=2.0, timestamp=t0)),
        "unknown_event_type": encode_event(event(event_type="like", timestamp=t0)),
        "too_old": encode_event(event(timestamp=t0 - 40 * 86_400_000)),
        "decode": b"\x00\x01 not avro",
    }
    items, expected = [], {}  # expected: index -> reason for what must be dead-lettered
    for p in range(PARTITIONS):
        for k in range(30):  # six seconds of valid events, with the invalid ones among them
            items.append(
                (p, f"k{p}-{k}".encode(), encode_event(event(user_id=f"u{k}", timestamp=t0 + 200 * k)), None)
            )
            if k % 6 == 3:
                reason = list(invalid)[k // 6 % len(invalid)]
                expected[len(items)] = reason
                items.append((p, f"bad{k}".encode(), invalid[reason], [("trace", f"t{p}-{k}".encode())]))
    valid_first = 2 * 30
    landed = produce(kafka_bootstrap, topic, items)

    with AppThread(settings) as run:
        wait_for(lambda: run.app.summary.windows_trained >= 2, 60, "the first windows to be trained")
        # Late: their window closed already. Then a later window, so that a snapshot follows them.
        late_items = [
            (p, b"late", encode_event(event(timestamp=t0 + 100)), [("trace", b"late")]) for p in range(2)
        ]
        later = [(p, None, encode_event(event(timestamp=t0 + 20_000 + p)), None) for p in range(2)]
        for i in range(len(late_items)):
            expected[len(items) + i] = "late"
        items += late_items + later
        landed += produce(kafka_bootstrap, topic, late_items + later)
        ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)
        group = settings.input.group_id
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == ends, 90, "all committed"
        )
        registry = run.app.registry
        run.stop()

    dead = read_all(kafka_bootstrap, settings.dead_letter.topic)
    origin = {landed[i]: (items[i], reason) for i, reason in expected.items()}
    assert len(dead) == len(expected)
    for msg in dead:
        h = _headers(msg)
        where = (int(h["stream-learner.source.partition"]), int(h["stream-learner.source.offset"]))
        (_, key, value, headers), reason = origin.pop(where)
        assert (msg.value(), msg.key()) == (value, key)  # the original bytes and key
        assert h["stream-learner.source.topic"] == topic.encode()
        assert h["stream-learner.reason"] == reason.encode()
        assert h["stream-learner.error"]
        assert h["trace"] == dict(headers)["trace"]  # the original headers travel along
    assert origin == {}

    counts = Counter(expected.values())
    for reason, n in counts.items():
        metric = (
            "stream_learner_events_late_total" if reason == "late" else "stream_learner_events_invalid_total"
        )
        labels = {} if reason == "late" else {"reason": reason}
        assert registry.get_sample_value(metric, labels) == n, reason
    windows = registry.get_sample_value("stream_learner_window_events_count")
    assert windows == registry.get_sample_value("stream_learner_windows_trained_total") >= 7
    assert registry.get_sample_value("stream_learner_window_events_sum") == valid_first + 2
    assert registry.get_sample_value("stream_learner_watermark_timestamp_seconds") >= (t0 + 6000) / 1000
    assert registry.get_sample_value("stream_learner_event_time_lag_seconds") >= 0
    for p in range(PARTITIONS):
        lag = registry.get_sample_value(
            "stream_learner_consumer_lag_records", {"topic": topic, "partition": str(p)}
        )
        assert lag == 0
    # Nothing else lost, nothing twice: the model holds exactly the valid, timely events.
    assert (
        read_snapshots(kafka_bootstrap, settings.snapshot.topic)[-1].meta.state_dict()["learner"][
            "events_trained"
        ]
        == valid_first + 2
    )


def test_ten_thousand_fuzzed_payloads_are_dead_lettered_by_the_running_job(kafka_bootstrap, new_topic):
    topic = new_topic("events", partitions=PARTITIONS)
    settings = learner_settings(kafka_bootstrap, topic, model={"kind": "logistic"})
    # Malformed payloads whose verdict does not depend on when the job reads them (an hour either way).
    hour = 3_600_000
    junk = [
        p
        for p in malformed(np.random.default_rng(99), 10_600)
        if reference(p, NOW_MS - hour) is not None
        and reference(p, NOW_MS - hour) == reference(p, NOW_MS + hour)
    ][:10_000]
    assert len(junk) == 10_000
    now_ms = int(time.time() * 1000)
    valid = [encode_event(event(user_id=f"u{k}", timestamp=now_ms - 3000 + k)) for k in range(300)]
    items = [(i % PARTITIONS, None, v, None) for i, v in enumerate(junk + valid)]
    produce(kafka_bootstrap, topic, items)
    ends = end_offsets(kafka_bootstrap, topic, PARTITIONS)

    with AppThread(settings, exit_when_idle=True) as run:
        summary = run.join(180)

    dead = read_all(kafka_bootstrap, settings.dead_letter.topic)
    reasons = Counter(_headers(m)["stream-learner.reason"].decode() for m in dead)
    assert reasons == Counter(reference(p) for p in junk)  # each one, once, with the reason it deserves
    assert all(_headers(m)["stream-learner.error"] for m in dead)
    assert sorted(m.value() for m in dead) == sorted(junk)
    assert summary.invalid == 10_000
    assert committed_offsets(kafka_bootstrap, settings.input.group_id, topic, PARTITIONS) == ends
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert snapshots[-1].meta.state_dict()["learner"]["events_trained"] == len(valid)


def test_a_stream_that_ends_with_invalid_messages_commits_them_once(kafka_bootstrap, new_topic):
    """Offsets past the last trained window (here: dead letters) are committed by a version of their
    own, without waiting for another window; a restart then dead-letters nothing again."""
    topic = new_topic("events", partitions=1)
    settings = learner_settings(kafka_bootstrap, topic, model={"kind": "logistic"})
    t0 = (int(time.time()) - 60) * 1000
    valid = [(0, None, encode_event(event(user_id=f"u{k}", timestamp=t0 + 100 * k)), None) for k in range(40)]
    tail = [(0, None, b"\x00 not avro", None) for _ in range(5)]
    produce(kafka_bootstrap, topic, valid)
    with AppThread(settings) as run:
        group = settings.input.group_id
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 40}, 60, "the valid events"
        )
        produce(kafka_bootstrap, topic, tail)  # after the last window was trained and committed
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group, topic, 1) == {0: 45}, 60, "the dead letters"
        )
        run.stop()
    with AppThread(settings) as again:  # resumes after the dead letters: nothing to send again
        lag = ("stream_learner_consumer_lag_records", (("partition", "0"), ("topic", topic)))
        wait_for(
            lambda: again.app.ready() and scrape(again.app.summary.metrics_url).get(lag) == 0,
            60,
            "the restarted learner to catch up",
        )
        summary = again.stop()
    assert summary.events == 0 and summary.invalid == 0  # it resumed past the dead letters
    letters = read_all(kafka_bootstrap, settings.dead_letter.topic)
    assert len(letters) == 5
    snapshots = read_snapshots(kafka_bootstrap, settings.snapshot.topic)
    assert snapshots[-1].meta.offsets[-1].last == 44
