"""Webhook signing keys: read once when the rules load, never shown.

A key file holds a Standard Webhooks secret: base64, optionally prefixed ``whsec_``.
It is opened without following a symlink and must be a regular file that neither
group nor others may read or write. The key's bytes appear in no repr, log line,
error message or command environment.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from dataclasses import dataclass, field

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
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"secret file {path} is a symlink; name the file itself") from None
        raise ValueError(f"cannot read secret file {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"secret file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(
                f"secret file {path} is open to group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}"
            )
        text = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
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
