"""Control records: no bytes make the reader raise, and requests are signed like snapshots."""

from __future__ import annotations

import json

import pytest

from stream_learner.kafka.control import (
    MAX_REQUEST_BYTES,
    ControlRequest,
    Refused,
    read_record,
    signed_message,
)
from stream_learner.snapshots.signing import Signer, Verifier, generate, private_key, public_key

KEY = b"home-feed"
REQUEST = json.dumps(
    {"action": "rollback", "to_version": 2, "request": "x", "requested_ms": 1, "expires_ms": 2}
).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 200_000, "too_large"),  # the crash loop of issue 22
        (b"[" * (MAX_REQUEST_BYTES - 1), "malformed"),  # within the size, deeper than the parser goes
        (b"{" * 3000, "malformed"),
        (b'{"a":' * 600 + b"1" + b"}" * 600, "malformed"),
        (b"\xff\xfe\x00", "malformed"),
        (b"", "malformed"),
        (None, "malformed"),
        (b"9" * 4000, "malformed"),  # past Python's int digit limit
        (b'"rollback"', "malformed"),
        (b'{"action": "rollback", "to_version": 1e999, "request": "x"}', "malformed"),
        (REQUEST.replace(b'"x"', b"7"), "malformed"),
    ],
)
def test_no_record_makes_the_reader_raise(value, reason):
    refused = read_record(KEY, value, None, None)
    assert isinstance(refused, Refused) and refused.reason == reason, refused


def test_a_well_formed_request_is_read():
    assert read_record(KEY, REQUEST, None, None) == ControlRequest("rollback", "x", 1, 2, 2)


def _keys() -> tuple[Signer, Verifier]:
    private, public = generate()
    return Signer(private_key(private)), Verifier((public_key(public),), required=True)


def test_a_signing_job_refuses_unsigned_and_badly_signed_requests():
    sign, verify = _keys()
    other, _ = _keys()
    good = sign(signed_message(KEY, REQUEST))
    assert read_record(KEY, REQUEST, good, verify.problem) == ControlRequest("rollback", "x", 1, 2, 2)
    for signature in (None, other(signed_message(KEY, REQUEST)), good[:-1] + bytes([good[-1] ^ 1])):
        refused = read_record(KEY, REQUEST, signature, verify.problem)
        assert isinstance(refused, Refused) and refused.reason == "signature", refused
    # the signature binds the model and the value: neither can be swapped under it
    assert isinstance(read_record(b"other-model", REQUEST, good, verify.problem), Refused)
    later = REQUEST.replace(b'"expires_ms": 2', b'"expires_ms": 9')
    assert isinstance(read_record(KEY, later, good, verify.problem), Refused)


def test_unsigned_requests_pass_when_signatures_are_checked_but_not_required():
    _, verify = _keys()
    optional = Verifier(verify.keys, required=False)
    assert isinstance(read_record(KEY, REQUEST, None, optional.problem), ControlRequest)
    wrong = read_record(KEY, REQUEST, b"\0" * 64, optional.problem)
    assert isinstance(wrong, Refused) and wrong.reason == "signature"
