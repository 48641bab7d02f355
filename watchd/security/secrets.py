"""Webhook signing keys: read once when the rules load, never shown.

A key file holds a Standard Webhooks secret: base64, optionally prefixed ``whsec_``.
It must pass ``watchd.security.trust`` (no symlink, owned by root, every directory above it
too) and neither group nor others may read or write it. The key's bytes appear in no repr, log line,
error message or command environment.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from watchd.security.trust import read_trusted

MAX_KEY_FILE = 4096
MIN_KEY_BYTES = 16
PREFIX = "whsec_"


@dataclass(frozen=True, slots=True)
class SigningKey:
    path: str
    key: bytes = field(repr=False)

    def __str__(self) -> str:
        return self.path


def read_signing_key(path: str) -> SigningKey:
    """The key in ``path``; ValueError (without the file's contents) if it cannot be used."""
    try:
        text = read_trusted(path, MAX_KEY_FILE, "secret file", secret=True)
    except OSError as error:
        raise ValueError(f"cannot read secret file {path}: {error.strerror}") from None
    if len(text) > MAX_KEY_FILE:
        raise ValueError(f"secret file {path} is larger than {MAX_KEY_FILE} bytes")
    return SigningKey(path, _decode(path, text))


def _decode(path: str, text: bytes) -> bytes:
    encoded = text.strip().removeprefix(PREFIX.encode())
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"secret file {path} does not hold a Standard Webhooks secret: base64, optionally "
            f"prefixed '{PREFIX}' (make one with: echo {PREFIX}$(head -c 32 /dev/urandom | "
            "base64))"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"secret file {path}: the key is {len(key)} bytes; use at least "
                         f"{MIN_KEY_BYTES}")
    return key
