"""Serving the newest model of a snapshot topic.

`ModelSubscriber` loads the newest good model (see `stream_learner.snapshots.log.SnapshotLog`) and then
follows the topic in a background thread: chunks are reassembled and verified, deltas are applied in
order (a delta that does not continue the model served is refused, and the subscriber waits for the
next full snapshot), and the model changes atomically for readers. A bad snapshot is refused with its
reason (logged, and counted in ``stream_learner_subscriber_snapshots_refused_total{model,reason}``); the
last good model stays in service. Nothing is ever unpickled. The metrics go to prometheus_client's
default registry unless ``registry`` is given, so a web service's own /metrics exports them.

With ``verify_key`` (the learner's Ed25519 public key) snapshots whose signature does not verify are
refused, and with ``require_signature`` unsigned ones too (`stream_learner.snapshots.signing`): the
learner's restore checks exactly the same. A snapshot that arrives after the model served with a
lower version is refused ("version"), never ignored without a word: versions only grow, so either
it or the model served was not written by this model's learner.

The quality gate (`stream_learner.snapshots.gate`): a snapshot the learner marked ``held`` is not
served; the last one that passed stays in service. Later deltas build on held ones, so the
subscriber folds them into a copy of the state (``_ahead``, twice the memory while it exists) and
serves that copy as soon as a snapshot passes. ``serve_held=True`` serves every snapshot, as a
subscriber that knows no gate does.

Either form of a model is followed: the training snapshots (``snapshot.topic``), or the serving form
(``serving.form_topic``: `stream_learner.snapshots.serving_form`), which is held as it arrives, only
the rows present and at its precision; each snapshot says which it is.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import get_args

import numpy as np

from stream_learner.config import KafkaSettings, Settings
from stream_learner.errors import BrokerError, SnapshotError, SnapshotRefusal
from stream_learner.kafka.admin import topic_messages
from stream_learner.learning.features import FeatureMapper
from stream_learner.metrics import REGISTRY, CollectorRegistry, SubscriberMetrics
from stream_learner.scoring.spec import ModelSpec
from stream_learner.serving import heap
from stream_learner.serving.compact import expand_features
from stream_learner.serving.features import InputFollower
from stream_learner.serving.lock import ReadWriteLock
from stream_learner.serving.model import ServableModel
from stream_learner.snapshots import chain as chains
from stream_learner.snapshots import serving_form
from stream_learner.snapshots.format import Snapshot, SnapshotKind, SnapshotMeta
from stream_learner.snapshots.gate import verdict_of
from stream_learner.snapshots.log import Entry, SnapshotLog
from stream_learner.snapshots.signing import Verifier

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
#: A folded state of either form.
Fold = chains.Fold | serving_form.ServingFold
#: How long `ModelSubscriber.close` waits for each of its threads.
CLOSE_SECONDS = 10.0


@dataclass(frozen=True)
class _Served:
    meta: SnapshotMeta
    fold: Fold  # the state; the model shares its tensors, deltas are folded into it in place
    model: ServableModel
    recent_items: tuple[str, ...]
    #: The features the input follower takes when this state is swapped in (then dropped here).
    follow: FeatureMapper | None = None


def _recent_items(meta: SnapshotMeta) -> tuple[str, ...]:
    try:
        items = meta.state_dict().get("learner", {}).get("recent_items", [])
    except (json.JSONDecodeError, AttributeError):
        return ()
    return tuple(str(i) for i in items) if isinstance(items, list) else ()


def _serves(name: str) -> bool:
    """The tensors of a state that serving reads: the model's weights and the features (the
    optimiser's are checked as the learner checks them, then dropped)."""
    return name.startswith(("model.", "features."))


def _load(chain: Sequence[Snapshot], on_refused: chains.OnRefused | None = None) -> tuple[Fold, ModelSpec]:
    """The verified state of a chain of either form (the optimiser's tensors checked and dropped)."""
    if chain[0].meta.form == "serving":
        return serving_form.load(chain, on_refused)
    return chains.load(chain, on_refused, _serves)


def _servable(fold: Fold, spec: ModelSpec, follow: bool = False) -> _Served:
    """The model of a folded state. With ``follow`` the snapshot's features are loaded for the input
    follower, which keeps them current, instead of into the model."""
    try:
        model = ServableModel(spec, fold.tensors, realtime=not follow)
        features = _features(spec, fold) if follow else None
    except ValueError as exc:
        raise SnapshotError("spec", f"v{fold.meta.version} does not fit its model spec: {exc}") from None
    return _Served(fold.meta, fold, model, _recent_items(fold.meta), features)


def _features(spec: ModelSpec, fold: Fold) -> FeatureMapper:
    """The id mapping and real-time features of a folded state (copies: the follower changes them;
    a serving form's in the training layout, every row)."""
    if isinstance(fold, serving_form.ServingFold):
        return FeatureMapper.from_spec(spec, expand_features(spec, fold.tensors))
    return FeatureMapper.from_spec(spec, {k: v for k, v in fold.tensors.items() if k.startswith("features.")})


class ModelSubscriber:
    """Serves the newest good model of ``model_name`` from its snapshot topic.

    ``start()`` follows the topic in a background thread; ``refresh()`` loads the newest model once,
    synchronously (for one-off use such as the CLI). ``score`` and ``recommend`` may be called from any
    number of threads; each sees one model version from start to end."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        model_name: str,
        registry: CollectorRegistry = REGISTRY,
        on_update: Callable[[SnapshotMeta], None] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        verify_key: str | None = None,
        require_signature: bool = False,
        serve_held: bool = False,
        follow_input: bool = True,
        input_settings: Settings | None = None,
    ) -> None:
        """``verify_key``: the learner's public key (base64 of 32 bytes, or PEM); snapshots signed
        otherwise are refused, and unsigned ones too with ``require_signature``. ``serve_held``:
        serve snapshots the quality gate held too. ``follow_input``: keep a model's real-time
        features current by reading the learner's input topic after each snapshot
        (`stream_learner.serving.features`), read and validated with ``input_settings``' [input] and
        [validation] (default: the defaults, with ``kafka``); off, they stay those of the snapshot."""
        self.kafka, self.topic, self.model_name = kafka, topic, model_name
        self._serve_held = serve_held
        self._ahead: tuple[Fold, ModelSpec] | None = None  # folded past the model served
        self._verifier = Verifier.of(verify_key, require_signature)
        self.metrics = SubscriberMetrics(
            model_name,
            registry,
            kinds=[k.lower() for k in get_args(SnapshotKind)],
            reasons=get_args(SnapshotRefusal),
        )
        self._on_update = on_update
        self._clock = clock
        self.input: InputFollower | None = None
        if follow_input:
            settings = input_settings or Settings()
            self.input = InputFollower(settings.model_copy(update={"kafka": kafka}), self.metrics, clock)
        self._served: _Served | None = None
        self._problem: str | None = f"looking for model {model_name} on {topic}"
        self._refusals = 0
        self._lock = ReadWriteLock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> ModelSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, wait: float | None = None) -> ModelSubscriber:
        """Follow the topic in a background thread; with ``wait``, wait that long for a first model,
        and say why at WARNING when none came (`problem`: a topic that does not exist, no snapshot of
        this model on it, every one refused, the broker down)."""
        if self.input is not None:
            self.input.start()
        self._thread = threading.Thread(target=self._run, name="model-subscriber", daemon=True)
        self._thread.start()
        if wait is not None and not self.wait_for_version(1, wait):
            log.warning("no model of %s served after %.0f s: %s", self.model_name, wait, self.problem)
        return self

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop following; waits at most ``timeout`` seconds for each thread (one blocked in a call to
        a broker that is down ends with the process)."""
        self._stop.set()
        threads = [self._thread] if self._thread is not None else []
        if self.input is not None:
            self.input.close(timeout)
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "the subscriber of %s did not stop within %.0f s; leaving it", self.model_name, timeout
                )

    @property
    def ready(self) -> bool:
        """A model is served (what a readiness probe asks)."""
        return self._served is not None

    @property
    def problem(self) -> str | None:
        """Why no model is served yet, or None once one is."""
        return None if self._served is not None else self._problem

    def refresh(self) -> int | None:
        """Load the newest good model now, if it is newer than the one served; return its version."""
        with self._log() as snapshots:
            self._load_newest(snapshots)
        return self.version

    def _log(self) -> SnapshotLog:
        return SnapshotLog(self.kafka, self.topic, self.model_name, self._refused, verify=self._verifier)

    # -- serving -------------------------------------------------------------------------------
    @property
    def version(self) -> int | None:
        served = self._served
        return served.meta.version if served else None

    @property
    def newest_version(self) -> int | None:
        """The newest version followed: the one served, or a newer one the gate held."""
        head = self._head()
        return head.version if head else None

    def _head(self) -> SnapshotMeta | None:
        if self._ahead is not None:
            return self._ahead[0].meta
        return self.meta

    @property
    def meta(self) -> SnapshotMeta | None:
        served = self._served
        return served.meta if served else None

    def wait_for_version(self, version: int, timeout: float) -> bool:
        """Wait until a model of at least ``version`` is served."""
        with self._changed:
            return self._changed.wait_for(lambda: (self.version or 0) >= version, timeout)

    def recent_items(self) -> tuple[str, ...]:
        """The recently active item ids carried by the model served (newest first)."""
        served = self._served
        return served.recent_items if served else ()

    def score(
        self,
        user_id: str,
        item_ids: Sequence[str],
        context: Mapping[str, str] | None = None,
        at_ms: int | None = None,
    ) -> np.ndarray:
        """Click probability of each item for the user (float32), from one model version, with the
        real-time features as of ``at_ms`` (default: now; the input applied so far)."""
        with self._lock.read():
            served = self._served
            if served is None:
                raise LookupError(f"no model of {self.model_name} has been loaded from {self.topic} yet")
            inputs = self.input.query if self.input is not None else None
            return served.model.score(user_id, item_ids, context, at_ms=at_ms, inputs=inputs)

    def recommend(
        self,
        user_id: str,
        k: int = 10,
        candidates: Sequence[str] | None = None,
        context: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` best items for the user with their scores, best first. Candidates default to
        the recently active items the snapshot carries."""
        pool = list(dict.fromkeys(candidates if candidates is not None else self.recent_items()))
        if not pool:
            return []
        scores = self.score(user_id, pool, context)
        best = np.argsort(-scores, kind="stable")[:k]
        return [(pool[i], float(scores[i])) for i in best]

    # -- the background thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._log() as snapshots:
                    start = self._load_newest(snapshots)
                    heap.release()
                    if self._served is None and self._ahead is None:
                        self._diagnose()
                    for entry in snapshots.follow(start, self._stop):
                        self._take(entry)
                        if entry.snapshot is not None and entry.snapshot.meta.kind == "FULL":
                            heap.release()  # the state it replaced, its payload and chunks are free
            except (BrokerError, SnapshotError) as exc:
                self._set_problem(f"reading {self.topic} failed: {exc}")
                log.warning("reading %s failed (%s); retrying in %.0f s", self.topic, exc, RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)
            except Exception:  # the model served stays; following must not die with it
                log.exception("following %s failed; retrying in %.0f s", self.topic, RETRY_SECONDS)
                self._stop.wait(RETRY_SECONDS)

    def _load_newest(self, snapshots: SnapshotLog) -> int:
        """Follow the newest chain that loads and serve its newest snapshot that passed the gate
        (from an older chain when it has none), unless what is followed is as new; return the
        offset to follow from."""
        head: tuple[Fold, ModelSpec] | None = None
        for chain in snapshots.chains():
            known = self._head()
            if known is not None and chain[-1].meta.version <= known.version:
                break
            try:
                fold, spec = _load(chain, self._refused_delta)
            except SnapshotError as err:
                self._refused(Entry(None, error=err))
                continue
            applied = chain[: fold.applied]
            passed = [i for i, snap in enumerate(applied) if self._passes(snap.meta)]
            if head is None and passed and passed[-1] == len(applied) - 1:
                self._swap(self._servable(fold, spec))
                self._ahead = None
                break
            if head is None:
                head = (fold, spec)
                self._note_held(applied[-1].meta)
            if passed:
                if applied[passed[-1]].meta.version > (self.version or 0):
                    self._swap(self._servable(*_load(applied[: passed[-1] + 1], self._refused_delta)))
                break
        if head is not None:
            self._ahead = head
        return snapshots.follow_from or 0

    def _diagnose(self) -> None:
        """Say why the newest chain gave no model: no topic, an empty one, one of other models only,
        or every snapshot of this model refused."""
        messages = topic_messages(self.kafka, self.topic)
        if messages is None:
            why = f"the snapshot topic {self.topic} does not exist (yet)"
        elif self._refusals:
            why = f"every snapshot of model {self.model_name} on {self.topic} was refused (see the log)"
        elif messages == 0:
            why = f"the snapshot topic {self.topic} is empty"
        else:
            why = (
                f"no snapshot of model {self.model_name} on {self.topic}: its {messages} messages are of "
                "other models (is the model name right?)"
            )
        self._set_problem(why + "; waiting for one")

    def _set_problem(self, problem: str) -> None:
        if self._served is None and problem != self._problem:
            log.warning("no model of %s served: %s", self.model_name, problem)
        self._problem = problem

    def _passes(self, meta: SnapshotMeta) -> bool:
        return self._serve_held or verdict_of(meta)[0] == "pass"

    def _take(self, entry: Entry) -> None:
        if entry.snapshot is None:
            self._refused(entry)
            return
        snap, head = entry.snapshot, self._head()
        if head is not None and snap.meta.version == head.version:
            return  # already followed (a re-read)
        try:
            if head is not None and snap.meta.version < head.version:
                raise SnapshotError(
                    "version",
                    f"v{snap.meta.version} follows v{head.version}: versions only grow, so one of them "
                    "is not this model's learner's (forged, or another writer; sign snapshots to tell which)",
                )
            if snap.meta.kind == "DELTA" and (head is None or snap.meta.base_version != head.version):
                raise SnapshotError(
                    "gap",
                    f"delta v{snap.meta.version} continues v{snap.meta.base_version}, but the model "
                    f"followed is v{head.version if head else None}; waiting for the next full snapshot",
                )
            self._follow(snap)
        except SnapshotError as err:
            self._refused(Entry(entry.offset, error=err))

    def _follow(self, snap: Snapshot) -> None:
        """Serve ``snap`` when it passes the gate; else fold it into the state ahead of the one
        served (a copy, made when the first held snapshot arrives)."""
        passes, served = self._passes(snap.meta), self._served
        if snap.meta.kind == "FULL":
            fold, spec = _load([snap])
            if passes:
                self._ahead = None
                self._swap(self._servable(fold, spec))
            else:
                self._ahead = (fold, spec)
                self._note_held(snap.meta)
            return
        if self._ahead is not None:
            fold, spec = self._ahead
        else:
            assert served is not None
            if passes:
                self._swap_in(served, snap)
                return
            fold, spec = served.fold.copy(), chains.read_spec(served.fold.base)
        fold.apply(snap)  # checks the whole delta first: on a refusal nothing has changed
        if passes:
            self._ahead = None
            self._swap(self._servable(fold, spec))
        else:
            self._ahead = (fold, spec)
            self._note_held(snap.meta)

    def _note_held(self, meta: SnapshotMeta) -> None:
        if self._passes(meta):
            return
        self.metrics.held.inc()
        log.warning(
            "not serving %s v%d: the quality gate held it (%s); v%s stays in service",
            self.model_name, meta.version, verdict_of(meta)[1], self.version,
        )  # fmt: skip

    def _swap_in(self, served: _Served, snap: Snapshot) -> None:
        """Fold delta ``snap`` into the model served, in one critical section: no reader sees a mix
        of versions. The fold checks the whole delta before it changes anything. The input follower
        then rebases on the new version's features (until it has, it serves the old version's plus
        the input after it, which hold the same events)."""
        with self._lock.write():
            served.fold.apply(snap)
            served.model.refresh_features(realtime=self.input is None)  # the follower keeps its own
            self._served = replace(served, meta=snap.meta, recent_items=_recent_items(snap.meta))
        if self.input is not None:
            self.input.rebase(snap.meta, _features(served.model.spec, served.fold))
        self._served_now()

    def _swap(self, served: _Served) -> None:
        """Serve another state; a follower of the input takes its features first, so that no
        request scores a model served without them."""
        if self.input is not None and served.follow is not None:
            self.input.rebase(served.meta, served.follow)
        with self._lock.write():
            self._served = replace(served, follow=None)
        self._served_now()

    def _served_now(self) -> None:
        m = self.meta
        assert m is not None
        self.metrics.applied.labels(m.kind.lower()).inc()
        self.metrics.model_version.set(m.version)
        self.metrics.model_freshness.set(max(0.0, self._clock() - m.newest_event_ms / 1000))
        log.info("serving model %s v%d (%s)", self.model_name, m.version, m.kind.lower())
        with self._changed:
            self._changed.notify_all()
        if self._on_update is not None:
            self._on_update(m)

    def _servable(self, fold: Fold, spec: ModelSpec) -> _Served:
        """The model of a verified state (`chains.load`: the learner's restore verifies the same
        way); a follower of the input keeps its own real-time features."""
        return _servable(fold, spec, follow=self.input is not None)

    def _refused_delta(self, _snap: Snapshot, err: SnapshotError) -> None:
        self._refused(Entry(None, error=err))

    def _refused(self, entry: Entry) -> None:
        err = entry.error
        assert err is not None
        self._refusals += 1
        self.metrics.refused.labels(err.reason).inc()
        where = f" (offset {entry.offset})" if entry.offset is not None else ""
        log.warning("refused a snapshot of %s on %s%s: %s", self.model_name, self.topic, where, err)
