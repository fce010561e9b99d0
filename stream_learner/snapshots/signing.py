"""Ed25519 signatures of snapshots: the learner signs, every reader can verify.

Anyone who may write to the snapshot topic can write a well-formed snapshot: a checksum proves only
that the payload is whole. A signature made with the learner's private key over the envelope's
metadata and the payload's sha256 (`stream_learner.snapshots.format.signed_message`) proves that the
learner wrote exactly this version, kind, base, offsets, spec and state: a copy relabelled as another
version, or forged metadata, does not verify.

Keys are Ed25519 (the ``cryptography`` package), written as base64 of the raw 32 bytes or as PEM
(``openssl genpkey -algorithm ed25519``). The private key (``snapshot.signing_key``) belongs in the
learner's environment only; readers get the public key (``snapshot.verify_key``, or
``ModelSubscriber(verify_key=...)``; several comma-separated while keys are rotated). A reader with a
key refuses a snapshot whose signature does not verify with any of its keys; with
``require_signature`` it refuses unsigned ones too (reason ``signature``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stream_learner.config import SnapshotSettings
from stream_learner.errors import ConfigError, SnapshotError
from stream_learner.snapshots.format import Chunk, signed_message

KEY_BYTES = 32


def _raw(text: str, setting: str) -> bytes | None:
    """The 32 raw bytes of a base64 key; None when ``text`` is PEM."""
    if text.lstrip().startswith("-----BEGIN"):
        return None
    try:
        raw = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(setting, "not base64 of a 32-byte Ed25519 key, nor a PEM key") from None
    if len(raw) != KEY_BYTES:
        raise ConfigError(setting, f"an Ed25519 key has {KEY_BYTES} bytes, this one {len(raw)}")
    return raw


def private_key(text: str, setting: str = "snapshot.signing_key") -> Ed25519PrivateKey:
    """An Ed25519 private key from base64 of its 32 bytes or from PEM (`ConfigError` otherwise)."""
    raw = _raw(text, setting)
    if raw is not None:
        return Ed25519PrivateKey.from_private_bytes(raw)
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(setting, "not a readable PEM private key (unencrypted, PKCS#8)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(setting, f"a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key(text: str, setting: str = "snapshot.verify_key") -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 bytes or from PEM (`ConfigError` otherwise)."""
    raw = _raw(text, setting)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(setting, "not a readable PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(setting, f"a {type(key).__name__}, not an Ed25519 key")
    return key


def generate() -> tuple[str, str]:
    """A new key pair, as base64 of the raw bytes: (private, public)."""
    key = Ed25519PrivateKey.generate()
    raw = serialization.Encoding.Raw
    private = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


class Signer:
    """Signs snapshots (`stream_learner.snapshots.format.encode` calls it with the signed message)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def __call__(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()


@dataclass(frozen=True)
class Verifier:
    """Checks a snapshot's signature (given to `stream_learner.snapshots.format.Assembler`): it must
    verify with one of ``keys`` (several while keys are rotated)."""

    keys: tuple[Ed25519PublicKey, ...]
    required: bool = False

    def __call__(self, chunk: Chunk) -> None:
        """Raise `SnapshotError` ("signature") when ``chunk`` is signed but not by the key, or is not
        signed and a signature is required."""
        message = signed_message(chunk.meta, chunk.sha256, chunk.size)
        problem = self.problem(message, chunk.signature, "its metadata and payload")
        if problem is not None:
            raise SnapshotError("signature", f"v{chunk.meta.version}: {problem}")

    def problem(self, message: bytes, signature: bytes | None, what: str = "the request") -> str | None:
        """None when ``signature`` is one of the keys' over ``message`` (or absent and not required);
        else what is wrong, naming ``what`` was signed. Control requests are checked with it too
        (`stream_learner.kafka.control`)."""
        if signature is None:
            return "not signed, and a signature is required" if self.required else None
        for key in self.keys:
            try:
                key.verify(signature, message)
                return None
            except InvalidSignature:
                continue
        return f"the signature does not match {what} (forged, relabelled, or signed with another key)"

    @staticmethod
    def of(verify_key: str | None, required: bool = False) -> Verifier | None:
        """A verifier for public keys (text: one key, or several separated by commas), or None when
        there is nothing to check."""
        if verify_key is None and not required:
            return None
        if verify_key is None:
            raise ConfigError("snapshot.verify_key", "a signature is required, but no key to check it with")
        keys = tuple(public_key(text) for text in verify_key.split(",") if text.strip())
        return Verifier(keys, required)


def signer(settings: SnapshotSettings) -> Signer | None:
    """The learner's signer, when ``snapshot.signing_key`` is set."""
    key = settings.signing_key
    return Signer(private_key(key.get_secret_value())) if key is not None else None


def verify_key(settings: SnapshotSettings) -> str | None:
    """The public keys signatures are checked with: the public half of ``signing_key`` (base64) and
    ``verify_key``, comma-separated; None when neither is set."""
    keys = [settings.verify_key] if settings.verify_key is not None else []
    own = signer(settings)
    if own is not None:
        raw = own.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        keys.insert(0, base64.b64encode(raw).decode())
    return ",".join(keys) or None


def verifier(settings: SnapshotSettings) -> Verifier | None:
    """How ``[snapshot]`` says signatures are checked (a learner always accepts its own key); None
    when there is nothing to check."""
    return Verifier.of(verify_key(settings), settings.require_signature)
