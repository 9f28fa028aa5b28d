"""Secrets come from the environment or systemd credentials, never from the config file.

In YAML a secret is written ``{env: SHOP_WEBHOOK_SECRET}`` or ``{credential: shop-secret}``
(read from ``$CREDENTIALS_DIRECTORY/shop-secret``, as systemd's ``LoadCredential=`` provides).
A literal string is refused so that no secret is ever committed with a config file.
Resolved values are ``SecretStr``: they print as ``**********`` and never reach the logs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class SecretRef(BaseModel):
    """Where to read a secret: exactly one of ``env`` or ``credential``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    credential: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_literals(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(
                "secrets are not written in the config file: use {env: VARIABLE} "
                "or {credential: NAME} (systemd LoadCredential=)"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.credential is None):
            raise ValueError("give exactly one of 'env' or 'credential'")
        return self

    def resolve(self) -> SecretStr:
        """Read the secret now; ``LookupError`` says which variable or file is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise LookupError(f"environment variable {self.env} is not set or empty")
            return SecretStr(value)
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise LookupError(
                f"credential {self.credential!r}: CREDENTIALS_DIRECTORY is not set "
                "(use LoadCredential= in the systemd unit)"
            )
        path = Path(directory) / str(self.credential)
        try:
            return SecretStr(path.read_text().strip())
        except OSError as exc:
            raise LookupError(f"credential {self.credential!r}: {exc.strerror}") from None

    def describe(self) -> str:
        """Where the secret comes from, for error messages (never the value)."""
        return f"env {self.env}" if self.env is not None else f"credential {self.credential}"
