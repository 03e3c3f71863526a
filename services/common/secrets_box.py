"""API secrets at rest: AES-256-GCM with a key from the environment.

HMAC verification needs the secret itself, so it cannot be hashed like a password; it
is encrypted instead, bound to its API key (the key is the associated data, so a
ciphertext moved to another key's record does not decrypt).
"""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRETS_KEY_ENV = "EXCHANGE_SECRETS_KEY"


def new_key() -> str:
    """A fresh key in the form EXCHANGE_SECRETS_KEY takes (urlsafe base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


class SecretBox:
    def __init__(self, key: str) -> None:
        raw = base64.urlsafe_b64decode(key.encode())
        if len(raw) != 32:
            raise ValueError(f"{SECRETS_KEY_ENV} must be 32 bytes, urlsafe-base64 encoded")
        self._aead = AESGCM(raw)

    @classmethod
    def from_env(cls) -> SecretBox:
        key = os.environ.get(SECRETS_KEY_ENV)
        if not key:
            raise RuntimeError(f"{SECRETS_KEY_ENV} is not set: API secrets are stored "
                               "encrypted with it (exchange up generates one)")
        return cls(key)

    def seal(self, secret: str, bound_to: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), bound_to.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode())
        try:
            return self._aead.decrypt(raw[:12], raw[12:], bound_to.encode()).decode()
        except InvalidTag:
            raise ValueError("sealed secret does not open with this key") from None
