"""Every setting of the learner, declared and validated in one place.

Settings come from a TOML file (sections as below) and from environment variables named
``STREAM_LEARNER_<SECTION>__<KEY>`` (environment wins). An unknown key or a bad value fails at
start with a `ConfigError` naming the setting. librdkafka property names are produced only at the
edge, by `KafkaSettings.client_config`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stream_learner.errors import ConfigError

ENV_PREFIX = "STREAM_LEARNER_"
ENV_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: librdkafka properties whose values are shown (`stream-learner config`, reprs) when set under
#: ``kafka.extra``: tuning and addressing that carries no credential. The value of any other property
#: is a secret: the properties librdkafka marks sensitive (``sasl.password``, ``ssl.key.pem``,
#: ``sasl.oauthbearer.client.secret``, ...) and those it does not (``sasl.oauthbearer.extensions``,
#: ``sasl.oauthbearer.token.endpoint.url``), or that a later librdkafka adds.
SHOWN_PROPERTIES = frozenset({
    "acks", "allow.auto.create.topics", "api.version.request", "batch.num.messages", "batch.size",
    "broker.address.family", "check.crcs", "client.dns.lookup", "client.rack", "compression.codec",
    "compression.level", "compression.type", "connections.max.idle.ms", "debug", "enable.idempotence",
    "enable.ssl.certificate.verification", "fetch.error.backoff.ms", "fetch.max.bytes",
    "fetch.min.bytes", "fetch.wait.max.ms", "heartbeat.interval.ms", "isolation.level", "linger.ms",
    "log.connection.close", "log_level", "max.in.flight.requests.per.connection",
    "max.partition.fetch.bytes", "max.poll.interval.ms", "message.max.bytes",
    "message.send.max.retries", "message.timeout.ms", "metadata.max.age.ms",
    "partition.assignment.strategy", "queue.buffering.max.kbytes", "queue.buffering.max.messages",
    "queue.buffering.max.ms", "queued.max.messages.kbytes", "queued.min.messages",
    "receive.message.max.bytes", "reconnect.backoff.max.ms", "reconnect.backoff.ms",
    "request.timeout.ms", "retries", "retry.backoff.max.ms", "retry.backoff.ms",
    "sasl.kerberos.service.name", "sasl.oauthbearer.method", "sasl.oauthbearer.scope",
    "session.timeout.ms", "socket.connection.setup.timeout.ms", "socket.keepalive.enable",
    "socket.nagle.disable", "socket.receive.buffer.bytes", "socket.send.buffer.bytes",
    "socket.timeout.ms", "ssl.ca.location", "ssl.certificate.location", "ssl.cipher.suites",
    "ssl.curves.list", "ssl.endpoint.identification.algorithm", "ssl.sigalgs.list",
    "statistics.interval.ms", "sticky.partitioning.linger.ms", "topic.metadata.propagation.max.ms",
    "topic.metadata.refresh.interval.ms",
})  # fmt: skip


def names_a_secret(key: str) -> bool:
    """Whether the value of librdkafka property ``key`` is kept secret (never shown): all but
    `SHOWN_PROPERTIES`."""
    return key not in SHOWN_PROPERTIES


def _without_credentials(url: str) -> str:
    parts = urlsplit(url.strip())
    if "@" not in parts.netloc:
        return url.strip()
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class _Urls(str):
    """One URL, or several comma-separated, that may carry credentials (``https://user:pw@host/``):
    the value is the URLs as given (for the clients that use them); its repr, and the settings shown
    by `stream-learner config`, replace the credentials with ``***``."""

    def shown(self) -> str:
        return ",".join(_without_credentials(url) for url in self.split(","))

    def __repr__(self) -> str:
        return repr(self.shown())


#: URLs whose credentials are never shown (repr, JSON dump), whatever prints the settings.
SecretUrl = Annotated[str, AfterValidator(_Urls), PlainSerializer(_Urls.shown, when_used="json")]


class KafkaSettings(_Section):
    """Connection to the cluster; shared by every client the learner creates."""

    bootstrap_servers: str = Field(
        "127.0.0.1:39092", description="Comma-separated host:port list of brokers."
    )
    client_id: str = Field("stream-learner", description="client.id of every client (shows in broker logs).")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    sasl_mechanism: str | None = Field(None, description="sasl.mechanism, e.g. PLAIN, SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="sasl.username.")
    sasl_password: SecretStr | None = Field(
        None, description="sasl.password; set it through the environment."
    )
    ssl_ca_location: str | None = Field(None, description="ssl.ca.location: CA bundle to verify brokers.")
    ssl_certificate_location: str | None = Field(None, description="ssl.certificate.location (mutual TLS).")
    ssl_key_location: str | None = Field(None, description="ssl.key.location (mutual TLS).")
    ssl_key_password: SecretStr | None = Field(None, description="ssl.key.password; through the environment.")
    extra: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Further librdkafka properties passed to every client as they are. Their values are "
        "never shown or logged, except those of tuning properties that carry no credential (timeouts, sizes, "
        "acks, compression, ...: `config.SHOWN_PROPERTIES`).",
    )
    startup_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="At start, a broker must answer and the input topic must exist within this time, or "
        "the job exits 2 naming the address or the topic; Kafka metadata and offset requests at start wait "
        "as long.",
    )

    @field_validator("extra", mode="after")
    @classmethod
    def _hide_secrets(cls, extra: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        return {k: SecretStr(v) if isinstance(v, str) and names_a_secret(k) else v for k, v in extra.items()}

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka properties for a client of this cluster (secrets revealed only here)."""
        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        extra = self.extra.items()
        conf.update({k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in extra})
        return conf


class InputSettings(_Section):
    """Where events come from and how they are encoded."""

    topic: str = Field("user-events", description="Input topic of Avro UserEvents; every partition is read.")
    group_id: str = Field(
        "stream-learner", description="Consumer group under which input offsets are committed."
    )
    format: Literal["avro", "confluent"] = Field(
        "avro", description="avro: schemaless Avro; confluent: Confluent wire format with a Schema Registry."
    )
    writer_schema: Path | None = Field(
        None, description="Writer schema file for plain Avro; default: bundled."
    )
    schema_registry_url: SecretUrl | None = Field(
        None,
        description="Schema Registry for input.format confluent; several comma-separated URLs of one "
        "registry are tried in turn (a network error, timeout or 5xx moves on to the next); credentials "
        "in them are never shown.",
    )
    schema_registry_username: str | None = Field(None, description="HTTP basic auth for the registry.")
    schema_registry_password: SecretStr | None = Field(None, description="HTTP basic auth password.")
    schema_registry_bearer_token: SecretStr | None = Field(
        None, description="Bearer token for the registry (instead of basic auth); through the environment."
    )
    schema_registry_ca_location: str | None = Field(
        None, description="CA bundle (PEM) that verifies the registry's certificate; default: the system's."
    )
    schema_registry_certificate_location: str | None = Field(
        None, description="Client certificate (PEM) for mutual TLS with the registry."
    )
    schema_registry_key_location: str | None = Field(
        None, description="Private key (PEM) of the client certificate, unless the certificate file holds it."
    )
    schema_registry_key_password: SecretStr | None = Field(
        None, description="Password of that private key; through the environment."
    )
    schema_registry_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of a registry request.")
    max_batch: int = Field(10_000, gt=0, description="Messages taken per consume call.")
    poll_timeout_seconds: float = Field(0.1, gt=0, description="Longest wait of one consume call.")
    max_poll_interval_ms: int = Field(
        300_000,
        ge=6_000,
        description="max.poll.interval.ms of the learner's consumers. The ownership lease's session "
        "timeout is the smaller of 10 s and this (brokers refuse sessions under 6 s by default).",
    )

    @model_validator(mode="after")
    def _registry_for_confluent(self) -> InputSettings:
        if self.format == "confluent" and not self.schema_registry_url:
            raise ValueError("input.schema_registry_url is required when input.format is 'confluent'")
        if self.schema_registry_bearer_token and self.schema_registry_username:
            raise ValueError(
                "input.schema_registry_bearer_token and schema_registry_username exclude each other"
            )
        if self.schema_registry_key_location and not self.schema_registry_certificate_location:
            raise ValueError("input.schema_registry_key_location needs schema_registry_certificate_location")
        return self


class ValidationSettings(_Section):
    """Which events are rejected as invalid."""

    max_age_seconds: float = Field(30 * 86400.0, gt=0, description="Older events are invalid.")
    max_future_skew_seconds: float = Field(300.0, ge=0, description="Events further ahead are invalid.")
    max_id_bytes: int = Field(1024, gt=0, description="Longer user or item ids (UTF-8 bytes) are invalid.")
    max_event_type_bytes: int = Field(
        64, gt=0, description="Longer event types (UTF-8 bytes) are invalid (reason field_too_long)."
    )
    max_context_bytes: int = Field(
        1024,
        gt=0,
        description="Longer context keys or values (UTF-8 bytes), used as fields or not, are invalid "
        "(reason field_too_long).",
    )


class WindowSettings(_Section):
    """How events are grouped into the timestep windows the model trains on."""

    kind: Literal["event_time", "count"] = Field(
        "event_time", description="Tumbling windows by event time, or every `count` events in arrival order."
    )
    size_seconds: float = Field(60.0, gt=0, description="Tumbling event-time window size.")
    count: int = Field(10_000, gt=0, description="Events per count window.")
    allowed_lateness_seconds: float = Field(
        5.0, ge=0, description="The watermark trails the newest event time by this much."
    )
    idle_timeout_seconds: float = Field(10.0, gt=0, description="Idle input closes open windows after this.")
    late_policy: Literal["drop", "dead_letter"] = Field(
        "drop", description="What happens to events for windows already closed (always counted)."
    )
    max_queued: int = Field(4, gt=0, description="Closed windows waiting for training before input pauses.")
    hold_input_while_training: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Read no input while windows train, unless more than they hold waits in the "
        "input, and catch up after: a window's model comes out sooner (auto: when training on the "
        "CPU, where reading and training contend for Python's interpreter lock; on a GPU reading "
        "goes on).",
    )


class DeadLetterSettings(_Section):
    topic: str = Field(
        "user-events.dlq",
        description="Where rejected and (optionally) late messages go, with headers saying why.",
    )


class ModelSettings(_Section):
    """The model: its kind, its fields and their sizes."""

    name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Names the model; snapshots, the ownership lease and the transactional id use it.",
    )
    kind: Literal["logistic", "fm", "dnn"] = Field(
        "fm", description="logistic regression, factorization machine, or DeepFM (embeddings + MLP + FM)."
    )
    embedding_dim: int = Field(16, gt=0, description="Width of each id embedding (fm, dnn).")
    hidden: list[int] = Field(default_factory=lambda: [64, 32], description="MLP layer widths (dnn).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout after each MLP layer (dnn).")
    user_buckets: int = Field(1 << 18, gt=0, description="Rows of the user table (hash buckets or slots).")
    item_buckets: int = Field(1 << 18, gt=0, description="Rows of the item table (hash buckets or slots).")
    context_fields: list[str] = Field(
        default_factory=list, description="Keys of the event's context map used as (hashed) fields."
    )
    context_buckets: int = Field(1 << 12, gt=0, description="Hash buckets of each context field.")
    context_field_buckets: dict[str, int] = Field(
        default_factory=dict, description="Hash buckets of particular context fields (overrides)."
    )
    table: Literal["hash", "dynamic"] = Field(
        "hash", description="How user and item ids map to rows: hashing, or a collisionless dynamic table."
    )
    admit_after: int = Field(1, gt=0, description="Dynamic table: sightings before an id gets its own row.")
    expire_after_seconds: float | None = Field(
        None,
        gt=0,
        description="Dynamic table: rows unseen for this long (event time) are freed even when the room "
        "is not needed (off by default: a full table prunes, see prune_by).",
    )
    prune_by: Literal["least_recent", "least_seen", "smallest_norm"] = Field(
        "least_recent",
        description="Dynamic table: when new ids find it full, the rows it reclaims first: of ids seen "
        "least recently, seen least often (needs count_features), or of the smallest weights' norm.",
    )
    prune_fraction: float = Field(
        1 / 64,
        gt=0,
        le=0.5,
        description="Dynamic table: share of its rows it reclaims, at least, each time new ids find it full.",
    )
    count_features: bool = Field(
        True,
        description="Per-user and per-item inputs as of each event (counts, rates, surprise; see "
        "learning/realtime.py and [features]); they travel in snapshots as features.* arrays.",
    )

    @model_validator(mode="after")
    def _known_context_fields(self) -> ModelSettings:
        for name, rows in self.context_field_buckets.items():
            if name not in self.context_fields:
                raise ValueError(
                    f"model.context_field_buckets names {name!r}, which is not in context_fields"
                )
            if rows <= 0:
                raise ValueError(f"model.context_field_buckets.{name} must be positive")
        return self

    @model_validator(mode="after")
    def _prune_by_counts(self) -> ModelSettings:
        if self.prune_by == "least_seen" and not self.count_features:
            raise ValueError("model.prune_by = least_seen needs model.count_features (its events counts)")
        return self

    def context_rows(self, name: str) -> int:
        """Hash buckets of context field ``name``."""
        return self.context_field_buckets.get(name, self.context_buckets)


class FeatureSettings(_Section):
    """Real-time per-id features (learning/realtime.py): every event sees the stream strictly before it."""

    feedback_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="Labels count in the features only this long after their event (event time), as when "
        "clicks or purchases arrive late; events themselves count at once.",
    )
    recent_seconds: float = Field(
        300.0, gt=0, description="Time constant of the decayed (recent) surprise input of every id."
    )


class TrainSettings(_Section):
    threads: int = Field(
        0,
        ge=0,
        description="torch CPU threads; 0: all cores but one, which is left to polling and decoding.",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="auto: CUDA when a GPU is present, else the CPU.",
    )
    batch_size: int = Field(1024, gt=0, description="Largest mini-batch within a window.")
    min_batch_size: int = Field(
        8, gt=0, description="Smallest mini-batch: a window of fewer events is one mini-batch."
    )
    window_steps: int = Field(
        16,
        gt=0,
        description="Mini-batch steps per window where min_batch_size and batch_size allow: the "
        "mini-batch is the window's events / window_steps, within [min_batch_size, batch_size].",
    )
    passes: int = Field(1, gt=0, description="Passes over each window.")
    sparse_optimizer: Literal["adagrad", "adam", "rowwise_adagrad"] = Field(
        "adagrad", description="Optimiser of the embedding tables (sparse updates); dense weights use Adam."
    )
    dense_lr_ratio: float = Field(0.02, gt=0, description="Dense (Adam) rate = learning rate x this.")
    weight_decay: float = Field(
        0.0, ge=0, description="L2: Adam weight decay, and lazy decay of touched rows."
    )
    grad_clip: float = Field(10.0, ge=0, description="Max gradient norm; 0 disables clipping.")
    holdout_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Newest fraction of each window kept out of training and scored after it.",
    )
    seed: int = Field(
        0, description="Seeds initialisation; each window's seed derives from it and the window."
    )
    deterministic: bool = Field(
        False, description="Deterministic torch algorithms: the same windows give the same model on the CPU."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on the CPU; bf16 or fp32 force it."
    )

    @model_validator(mode="after")
    def _batch_bounds(self) -> TrainSettings:
        if self.min_batch_size > self.batch_size:
            raise ValueError("train.min_batch_size must not exceed train.batch_size")
        return self


class LRSettings(_Section):
    """Learning-rate control (see learning/rates.py); the rate of the sparse (table) optimiser."""

    policy: Literal["constant", "plateau", "drift"] = Field(
        "drift",
        description="constant; plateau: decay when the loss stops improving; drift: plateau + detector.",
    )
    initial: float = Field(0.1, gt=0, description="Starting rate of the table optimiser.")
    min: float = Field(
        0.1,
        gt=0,
        description="Floor of plateau decay (lr.initial: none, see docs/decisions/drift-forgetting.md).",
    )
    max: float = Field(0.3, gt=0, description="The rate right after a detected drift.")
    factor: float = Field(0.5, gt=0, lt=1, description="Decay factor on plateau.")
    patience: int = Field(8, gt=0, description="Windows without improvement that make a plateau.")
    detector: Literal["page_hinkley", "adwin"] = Field(
        "page_hinkley", description="Change detector on the prequential loss (drift policy)."
    )
    ph_delta: float = Field(
        0.02,
        ge=0,
        description="Page-Hinkley: half the rise of the mean loss per event it looks for, as a fraction of "
        "the mean loss (0.02: a rise of 4%).",
    )
    ph_threshold: float = Field(
        20.0,
        gt=0,
        description="Page-Hinkley: evidence (a log-likelihood ratio summed over events) that signals drift.",
    )
    adwin_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN: confidence of a detected change.")
    drift_forget: float = Field(
        0.3, gt=0, le=1, description="On drift, scale the table optimiser's squared-gradient sums by this."
    )
    drift_decay: float = Field(
        0.5, gt=0, lt=1, description="After a drift, the rate returns from lr.max by this factor per window."
    )
    drift_reset_z: float = Field(
        3.0,
        ge=0,
        description="On drift, also reset the user and item rows whose own loss rose by more than this many "
        "standard deviations (see docs/decisions/per-id-drift-reset.md); 0 turns it off.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> LRSettings:
        if not self.min <= self.initial <= self.max:
            raise ValueError("lr.initial must lie within [lr.min, lr.max]")
        return self


class GuardSettings(_Section):
    """The loss-spike guard (see stream_learner/learning/guard.py)."""

    loss_spike_factor: float = Field(
        5.0,
        gt=1,
        description="Skip a window whose loss exceeds k x the average, when that is also significant "
        "for the number of events it holds.",
    )
    min_events: int = Field(
        100, ge=1, description="Windows of fewer events are never skipped as a loss spike (too noisy)."
    )
    max_consecutive_skips: int = Field(
        3, ge=0, description="After this many loss spikes in a row, accept the next window and start over."
    )


class SnapshotSettings(_Section):
    topic: str = Field(
        "model-snapshots", description="Snapshot topic (one partition; created with the configs it needs)."
    )
    every_windows: int = Field(1, gt=0, description="Publish a snapshot after every N trained windows.")
    interval_seconds: float = Field(
        30.0, gt=0, description="Trained windows wait at most this long for a snapshot (at once when idle)."
    )
    full_every: int = Field(10, gt=0, description="Every K-th snapshot is full, the others deltas.")
    max_message_bytes: int = Field(
        8 << 20, ge=1 << 16, description="Largest snapshot message; bigger snapshots are split into chunks."
    )
    recent_items: int = Field(1000, ge=0, description="Recently active item ids carried for serving.")
    retention_bytes: int = Field(
        16 << 30,
        ge=1 << 20,
        description="Size the snapshot topic keeps (it is created without time-based retention); keep it "
        "above a few full snapshots so that the newest full one and its deltas are never deleted.",
    )
    checkpoint_dir: Path | None = Field(
        None, description="Also keep snapshots here; restored from when it holds the newest version."
    )
    signing_key: SecretStr | None = Field(
        None,
        description="Ed25519 private key that signs every snapshot (base64 of the 32-byte key, or PEM); "
        "only in the learner's environment (see docs/operations.md, Snapshot signing).",
    )
    verify_key: str | None = Field(
        None,
        description="Ed25519 public key (base64 of 32 bytes, or PEM; several comma-separated while keys are "
        "rotated) that snapshot signatures are checked with, besides the public half of "
        "snapshot.signing_key. A snapshot whose signature matches none is refused.",
    )
    require_signature: bool = Field(
        False,
        description="Refuse unsigned snapshots too (learner restore, subscriber, CLI); needs "
        "snapshot.verify_key or snapshot.signing_key.",
    )

    @model_validator(mode="after")
    def _key_to_require(self) -> SnapshotSettings:
        if self.require_signature and self.verify_key is None and self.signing_key is None:
            raise ValueError("snapshot.require_signature needs snapshot.verify_key (or snapshot.signing_key)")
        return self


class ServingSettings(_Section):
    """The quality gate (which snapshots serving takes) and rollback (docs/operations.md)."""

    max_auc_drop: float | None = Field(
        None,
        gt=0,
        description="Hold a snapshot whose prequential (or holdout) AUC is more than this below the "
        "reference of recent passing snapshots; subscribers keep serving the last one that passed. "
        "None: no AUC gate.",
    )
    max_loss_rise: float | None = Field(
        None,
        gt=0,
        description="Hold a snapshot whose prequential (or holdout) log loss is more than this above the "
        "reference. None: no loss gate.",
    )
    reference_snapshots: int = Field(
        10, gt=0, description="The reference: event-weighted metrics of the last N judged, passing snapshots."
    )
    min_events: int = Field(
        2000,
        gt=0,
        description="A snapshot whose windows scored fewer events is not judged (it keeps the verdict "
        "before it), and the reference counts only once it holds this many events.",
    )
    control_topic: str | None = Field(
        None,
        description="Topic through which rollback requests reach the active learner (one partition, "
        "created when missing); default: <snapshot.topic>.control.",
    )
    publish_form: bool = Field(
        False,
        description="Also publish a serving form of every version (no optimiser state, only the rows "
        "that hold information, weights at serving.precision) to serving.form_topic, in the same "
        "transaction as the training snapshot (docs/decisions/serving-snapshots.md).",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        "int8",
        description="Weights of the serving form: float32, float16, or int8 with a float32 scale per "
        "row (tables one wide in float16).",
    )
    form_topic: str | None = Field(
        None, description="Topic of the serving form (one partition); default: <snapshot.topic>.serving."
    )

    @property
    def gated(self) -> bool:
        return self.max_auc_drop is not None or self.max_loss_rise is not None

    def form_topic_for(self, snapshot_topic: str) -> str:
        """The serving form's topic beside snapshot topic ``snapshot_topic``."""
        return self.form_topic or f"{snapshot_topic}.serving"


class CatchupSettings(_Section):
    """Catch-up: larger mini-batches and fewer snapshots while the input lags far behind."""

    enabled: bool = Field(
        False,
        description="Adapt training to the lag. Off by default: the model then depends on how far behind "
        "the learner was (replay still reproduces it: the settings of each window are recorded).",
    )
    enter_records: int = Field(
        1_000_000, gt=0, description="Catch up while the consumer lag exceeds this many records..."
    )
    enter_seconds: float = Field(
        600.0, gt=0, description="...or the event-time lag (wall clock minus newest event) this many seconds."
    )
    exit_records: int = Field(
        100_000, ge=0, description="Return to normal once the lag is below this many records..."
    )
    exit_seconds: float = Field(
        120.0, ge=0, description="...and the event-time lag below this many seconds (hysteresis)."
    )
    batch_multiplier: int = Field(
        8,
        ge=1,
        description="While catching up, mini-batches are this many times their ordinary size (see "
        "train.window_steps), each weighted as that many mini-batches (so an event moves the weights "
        "as much).",
    )
    snapshot_factor: int = Field(
        10,
        ge=1,
        description="While catching up, snapshots come this many times less often (snapshot.every_windows "
        "and snapshot.interval_seconds multiplied).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> CatchupSettings:
        if self.exit_records > self.enter_records or self.exit_seconds > self.enter_seconds:
            raise ValueError("catchup.exit_* must not exceed catchup.enter_*")
        return self


class DeliverySettings(_Section):
    mode: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once",
        description="exactly_once: snapshot and offsets in one transaction; at_least_once: for brokers "
        "without transactions (a crash between publish and commit replays events).",
    )
    transaction_timeout_ms: int = Field(
        600_000, gt=0, description="transaction.timeout.ms; at most the broker's transaction.max.timeout.ms."
    )
    stall_seconds: float = Field(
        10.0,
        gt=0,
        description="A snapshot commit that makes no progress for this long (the broker is away) turns "
        "/readyz 503 and stream_learner_active 0 until a commit progresses again.",
    )
    commit_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A snapshot commit that makes no progress for this long ends the job with exit code 4, "
        "so that its restart or the standby resumes from the last commit; also bounds each Kafka call of "
        "the producer.",
    )
    shutdown_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="On SIGTERM, or when leaving after a failure: finishing the window in training, the "
        "final snapshot and closing take at most this long; then the process exits (4) whatever is left. "
        "Keep the supervisor's grace period (terminationGracePeriodSeconds) above it.",
    )

    @model_validator(mode="after")
    def _stall_before_timeout(self) -> DeliverySettings:
        if self.stall_seconds >= self.commit_timeout_seconds:
            raise ValueError("delivery.stall_seconds must be below delivery.commit_timeout_seconds")
        return self


class MetricsSettings(_Section):
    """The HTTP endpoint with /metrics, /healthz and /readyz."""

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(9464, ge=0, le=65535, description="0 picks a free port.")
    stall_seconds: float = Field(
        120.0, gt=0, description="/healthz answers 503 when the main loop has not turned for this long."
    )


class WarmStartSettings(_Section):
    """Where the first model comes from when no snapshot is restored (see snapshots/warmstart.py)."""

    source: Literal["none", "topic", "file"] = Field(
        "topic",
        description="topic: restore the newest committed snapshot, else start fresh; file: the same, but "
        "start from warm_start.path when there is nothing to restore; none: never restore, start afresh "
        "(versions continue above the newest; input resumes at the committed offsets).",
    )
    path: Path | None = Field(None, description="source = file: a full snapshot file (checkpoint format).")
    pretrained: Path | None = Field(None, description="safetensors file with embedding tables to start from.")

    @model_validator(mode="after")
    def _path_for_file(self) -> WarmStartSettings:
        if self.source == "file" and self.path is None:
            raise ValueError("warm_start.path is required when warm_start.source is 'file'")
        if self.source == "file" and self.pretrained is not None:
            raise ValueError("warm_start.pretrained cannot be combined with source 'file' (it has tables)")
        return self


class DistillSettings(_Section):
    """A smaller student model trained beside the model, per window, on the model's outputs mixed with
    the true labels, and published as a model of its own (learning/student.py; off by default)."""

    enabled: bool = Field(False, description="Train and publish a student model beside the model.")
    model_name: str = Field(
        "",
        pattern=r"^[A-Za-z0-9._-]*$",
        description="The student's model name on the snapshot topic (default: <model.name>.student).",
    )
    kind: Literal["logistic", "fm", "dnn"] | None = Field(
        None, description="The student's model kind (default: the model's)."
    )
    embedding_dim: int = Field(4, gt=0, description="Width of the student's id embeddings (fm, dnn).")
    hidden: list[int] | None = Field(
        None, description="The student's MLP layer widths (dnn; default: the model's)."
    )
    alpha: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Weight of the model's probabilities (soft labels) in the student's targets; the "
        "true labels weigh 1 - alpha (0.9: measured by benchmarks.distillation on two streams).",
    )

    def name_for(self, model_name: str) -> str:
        """The student's model name beside model ``model_name``."""
        return self.model_name or f"{model_name}.student"


class DistributedSettings(_Section):
    """A job of several ranks launched by torchrun (see docs/distributed.md)."""

    timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest wait of one collective: a rank that died or hangs fails the others after "
        "this long (torchrun then restarts the group, which resumes from the last commit).",
    )


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid", frozen=True
    )

    kafka: KafkaSettings = KafkaSettings()
    input: InputSettings = InputSettings()
    validation: ValidationSettings = ValidationSettings()
    window: WindowSettings = WindowSettings()
    dead_letter: DeadLetterSettings = DeadLetterSettings()
    model: ModelSettings = ModelSettings()
    features: FeatureSettings = FeatureSettings()
    train: TrainSettings = TrainSettings()
    lr: LRSettings = LRSettings()
    guard: GuardSettings = GuardSettings()
    snapshot: SnapshotSettings = SnapshotSettings()
    serving: ServingSettings = ServingSettings()
    catchup: CatchupSettings = CatchupSettings()
    delivery: DeliverySettings = DeliverySettings()
    metrics: MetricsSettings = MetricsSettings()
    warm_start: WarmStartSettings = WarmStartSettings()
    distributed: DistributedSettings = DistributedSettings()
    distill: DistillSettings = DistillSettings()

    @model_validator(mode="after")
    def _delay_within_expiry(self) -> Settings:
        m = self.model
        expiry = m.expire_after_seconds
        if m.table == "dynamic" and expiry is not None and self.features.feedback_delay_seconds >= expiry:
            raise ValueError(
                "features.feedback_delay_seconds must be shorter than model.expire_after_seconds: a "
                "row is given to a new id only when no label of its old id can be pending"
            )
        return self

    @model_validator(mode="after")
    def _serving_form_apart(self) -> Settings:
        topic = self.serving.form_topic_for(self.snapshot.topic)
        if topic in (self.snapshot.topic, self.serving.control_topic):
            raise ValueError(
                "serving.form_topic must differ from snapshot.topic and serving.control_topic: the "
                "serving form has no optimiser state and cannot restore a learner"
            )
        return self

    @model_validator(mode="after")
    def _student_named_apart(self) -> Settings:
        if self.distill.enabled and self.distill.name_for(self.model.name) == self.model.name:
            raise ValueError(
                "distill.model_name must differ from model.name: the student is a model of its own"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


def _env_name_problems(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """``STREAM_LEARNER_<SECTION>__<KEY>`` variables that name no setting, as (setting, problem)."""
    problems = []
    for name in environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or ENV_DELIMITER not in upper:
            continue
        section, _, key = upper[len(ENV_PREFIX) :].lower().partition(ENV_DELIMITER)
        field = Settings.model_fields.get(section)
        if field is None:
            problems.append((section, f"unknown section (from environment variable {name})"))
            continue
        sub = field.annotation
        top_key = key.split(ENV_DELIMITER)[0]
        if isinstance(sub, type) and issubclass(sub, BaseModel) and top_key not in sub.model_fields:
            problems.append((f"{section}.{top_key}", f"unknown setting (from environment variable {name})"))
    return problems


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file at `path` (optional) overlaid with ``STREAM_LEARNER_*`` environment variables.
    A `ConfigError` names every invalid or unknown setting, not only the first."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    problems = _env_name_problems(os.environ)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        named = {setting for setting, _ in problems}
        for err in exc.errors():
            setting = ".".join(str(p) for p in err["loc"]) or "settings"
            if setting not in named:
                problems.append((setting, err["msg"]))
    if problems:
        raise ConfigError(*problems[0], others=problems[1:])
    return settings
