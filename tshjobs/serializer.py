"""A task serializer that refuses any message not signed with our secret.

Huey stores tasks as pickles. Unpickling data that someone else wrote runs
their code, so every message carries an HMAC-SHA256 of its bytes, keyed by a
key derived from TSHJOBS_SECRET_KEY, and the signature is checked before
`pickle.loads` sees a byte. Whoever can write to Redis but lacks the secret
cannot run code in a consumer or the dashboard. The pickle is signed, not
encrypted: task arguments are readable in Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from huey.serializer import Serializer

logger = logging.getLogger(__name__)

SIGNATURE_BYTES = 32
PREFIX = b"tshjobs1:"


class InvalidSignature(ValueError):
    """Raised when a queued message is unsigned or signed with another key."""


def derive_key(secret: str, purpose: bytes) -> bytes:
    """Derive a key for one purpose, so one secret can serve several."""
    return hmac.new(secret.encode(), purpose, hashlib.sha256).digest()


class SignedSerializer(Serializer):
    def __init__(self, secret: str):
        super().__init__()
        self._key = derive_key(secret, b"tshjobs task signature")

    def _sign(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def serialize(self, data) -> bytes:
        payload = super().serialize(data)
        return PREFIX + self._sign(payload) + payload

    def deserialize(self, data: bytes):
        if not data.startswith(PREFIX):
            raise InvalidSignature("queued message is not signed by tshjobs")

        body = data[len(PREFIX) :]
        signature, payload = body[:SIGNATURE_BYTES], body[SIGNATURE_BYTES:]
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidSignature(
                "queued message has a bad signature: it was written by someone"
                " without this appliance's TSHJOBS_SECRET_KEY"
            )
        return super().deserialize(payload)
