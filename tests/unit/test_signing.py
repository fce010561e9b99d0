"""Snapshot signatures: what they cover, how keys are read, and which layout each envelope has."""

from __future__ import annotations

import io
from dataclasses import replace

import fastavro
import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stream_learner.config import SnapshotSettings
from stream_learner.errors import ConfigError, SnapshotError
from stream_learner.snapshots import signing
from stream_learner.snapshots.format import (
    FORMAT_VERSION,
    SIGNED_FORMAT_VERSION,
    WRITER_SCHEMAS,
    Assembler,
    PartitionRange,
    SnapshotMeta,
    decode_chunk,
    encode,
    encode_payload,
)

META = SnapshotMeta(
    model_name="m",
    version=11,
    kind="DELTA",
    base_version=10,
    spec='{"kind": "logistic"}',
    created_ms=1,
    window_start_ms=2,
    window_end_ms=3,
    newest_event_ms=4,
    offsets=(PartitionRange("in", 0, 100, 199),),
    metrics={"validation_loss": 0.5, "events": 100.0},
    state='{"learner": {}}',
)
PAYLOAD = encode_payload({"w": torch.arange(6.0)})
PRIVATE, PUBLIC = signing.generate()


def _assemble(messages: list[bytes], verify: signing.Verifier | None):
    assembler = Assembler(verify=verify)
    return [assembler.add(decode_chunk(m)) for m in messages][-1]


def _signed(meta: SnapshotMeta = META) -> list[bytes]:
    return list(encode(meta, PAYLOAD, 1 << 16, signing.Signer(signing.private_key(PRIVATE))))


def test_a_signed_snapshot_verifies_and_every_changed_field_breaks_it():
    verify = signing.Verifier((signing.public_key(PUBLIC),), required=True)
    assert _assemble(_signed(), verify).meta == META
    changes = {
        "version": 17,
        "kind": "FULL",
        "base_version": None,
        "offsets": (PartitionRange("in", 0, 0, 99),),
        "spec": '{"kind": "fm"}',
        "state": '{"learner": {"events_trained": 1}}',
        "model_name": "other",
        "metrics": {"validation_loss": 0.1, "events": 100.0},
    }
    signed = decode_chunk(_signed()[0])
    for name, value in changes.items():
        forged = replace(signed, meta=replace(signed.meta, **{name: value}))
        with pytest.raises(SnapshotError, match="signature") as err:
            verify(forged)
        assert err.value.reason == "signature", name
    with pytest.raises(SnapshotError, match="signature"):
        verify(replace(signed, sha256="0" * 64))


def test_unsigned_snapshots_pass_unless_a_signature_is_required_and_foreign_keys_never():
    unsigned = list(encode(META, PAYLOAD, 1 << 16))
    assert _assemble(unsigned, signing.Verifier((signing.public_key(PUBLIC),))) is not None
    with pytest.raises(SnapshotError, match="not signed"):
        _assemble(unsigned, signing.Verifier((signing.public_key(PUBLIC),), required=True))
    _, other = signing.generate()
    with pytest.raises(SnapshotError, match="does not match"):
        _assemble(_signed(), signing.Verifier((signing.public_key(other),)))


def test_unsigned_envelopes_keep_the_first_layout_and_signed_ones_have_the_second():
    unsigned, signed = encode(META, PAYLOAD, 1 << 16), _signed()
    for value in unsigned:  # exactly what readers before signatures read: no byte left over
        buf = io.BytesIO(value)
        record = fastavro.schemaless_reader(buf, WRITER_SCHEMAS[FORMAT_VERSION], None)
        assert record["format_version"] == FORMAT_VERSION and buf.tell() == len(value)
        assert decode_chunk(value).signature is None
    assert all(decode_chunk(v).signature for v in signed)
    assert all(decode_chunk(v).meta == META for v in signed)
    buf = io.BytesIO(signed[0])
    assert fastavro.schemaless_reader(buf, WRITER_SCHEMAS[SIGNED_FORMAT_VERSION], None)["format_version"] == 2


def test_keys_are_read_from_base64_or_pem_and_bad_ones_name_the_setting():
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    message = b"snapshot"
    signing.public_key(public_pem).verify(signing.private_key(pem).sign(message), message)
    settings = SnapshotSettings(signing_key=PRIVATE)
    assert signing.verify_key(settings) == PUBLIC  # the public half, when no verify_key is given
    for text in ("not a key", "AAAA", "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----"):
        with pytest.raises(ConfigError, match=r"snapshot\.signing_key"):
            signing.private_key(text)
    with pytest.raises(ConfigError, match=r"snapshot\.verify_key"):
        signing.public_key("AAAA")


def test_requiring_a_signature_needs_a_key():
    with pytest.raises(ValueError, match="require_signature"):
        SnapshotSettings(require_signature=True)
    assert signing.verifier(SnapshotSettings()) is None
    checks = signing.verifier(SnapshotSettings(verify_key=PUBLIC, require_signature=True))
    assert checks is not None and checks.required


def test_while_keys_are_rotated_either_key_verifies():
    new_private, new_public = signing.generate()
    rotating = SnapshotSettings(signing_key=new_private, verify_key=PUBLIC)  # signs new, still reads old
    verify = signing.verifier(rotating)
    assert verify is not None and len(verify.keys) == 2
    assert _assemble(_signed(), verify) is not None  # signed with the old key
    reader = signing.Verifier.of(f"{new_public},{PUBLIC}", required=True)
    assert reader is not None and _assemble(_signed(), reader) is not None
