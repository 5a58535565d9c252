"""Endpoint secrets and delivery signatures (the scheme the README tells receivers to check).

`Webhook-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>`, where the key is the
whole secret as UTF-8 (`whsec_` included), `timestamp` is the `Webhook-Timestamp` header and
`body` the raw request body. Signing the timestamp with the body lets a receiver refuse an old
message replayed later; a comparison in constant time keeps the signature from leaking.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    """32 random bytes, URL-safe: shown once to the endpoint's owner, then never again."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Webhook-Signature` header value for this body sent at this unix time."""
    message = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"
