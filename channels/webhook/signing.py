"""What inbound and outbound webhooks share: the HMAC signature and secret resolution."""

from __future__ import annotations

import hashlib
import hmac

from router.secrets import SecretRef

SIGNATURE_HEADER = "X-Triaged-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def secret_bytes(owner: str, what: str, ref: SecretRef | None) -> bytes | None:
    """Resolve ``ref`` now; the error names the input/output, the setting and the variable."""
    if ref is None:
        return None
    try:
        return ref.resolve().get_secret_value().encode()
    except LookupError as exc:
        raise LookupError(f"{owner}: {what}: {exc}") from None
