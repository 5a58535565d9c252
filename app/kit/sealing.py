"""Secrets the server must read back, kept sealed (encrypted) in the database.

An API key is stored as a hash: the server only ever compares it. A webhook endpoint's
secret cannot be: every delivery is signed with it (HMAC-SHA256), so the server needs the
secret itself. It is stored sealed with Fernet (AES-128-CBC and HMAC-SHA256, from
`cryptography`) under a key kept outside the database, so a copy of the database (a backup,
a replica, a dump) reveals no secret, and a tampered value is refused rather than used.

The keys come from `ENCRYPTION_KEYS` (comma-separated, `python -m app generate-key` makes
one): the first seals, every one opens. Rotating is putting a new key first, running
`python -m app reseal-secrets`, then dropping the old one. Without `ENCRYPTION_KEYS`, one key
is kept in `ENCRYPTION_KEY_FILE` (`./prompt_manager.key`), created on first use and readable
by its owner only: right for the embedded default, where one process on one machine holds
everything; every process that sends webhooks (API and workers, on any host) must hold the
same keys, which `ENCRYPTION_KEYS` makes explicit.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

logger = logging.getLogger(__name__)


class SealingKeyError(RuntimeError):
    """The keys cannot be had: a malformed ENCRYPTION_KEYS, or a key file that cannot be
    read or created. Raised at startup, before anything is sealed or opened."""


class UnreadableSecret(RuntimeError):
    """A sealed value that none of this process's keys opens (sealed under a key it does not
    hold, or altered). Its text never includes the value."""


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SealingKeyError("no key given (unset it to use ENCRYPTION_KEY_FILE)")
        fernets = []
        for number, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except ValueError:
                raise SealingKeyError(
                    f"encryption key #{number} is not a Fernet key (32 url-safe base64-encoded "
                    "bytes; `python -m app generate-key` makes one)"
                ) from None
        self._primary = fernets[0]
        self._all = MultiFernet(fernets)

    def seal(self, secret: str) -> str:
        return self._primary.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._all.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise UnreadableSecret(
                "a stored secret could not be opened: it was sealed under a key this process "
                "does not hold (ENCRYPTION_KEYS must be the same on every process), or altered"
            ) from None

    def resealed(self, sealed: str) -> str | None:
        """The value sealed under the first key, or None if it already is."""
        with contextlib.suppress(InvalidToken):
            self._primary.decrypt(sealed.encode())
            return None
        return self.seal(self.open(sealed))


def load_box(*, keys: str | None, key_file: Path, warn_on_file: bool) -> SecretBox:
    """The process's box: the `keys` (ENCRYPTION_KEYS), or else the one in `key_file` (created
    if missing; with a warning when `warn_on_file`, as outside the embedded default every
    process must hold the same keys). `Settings.secret_box()` calls it with the settings'."""
    if keys is not None:
        return SecretBox(split_keys(keys))
    path = key_file
    key = _key_file(path)
    try:
        box = SecretBox([key])
    except SealingKeyError:
        raise SealingKeyError(
            f"ENCRYPTION_KEY_FILE {path} does not hold a key (it was altered?); restore it "
            "from your backup, or set ENCRYPTION_KEYS"
        ) from None
    if warn_on_file:
        logger.warning(
            "ENCRYPTION_KEYS is not set: webhook secrets are sealed with the key in %s. Every "
            "process that sends webhooks must hold the same key: set ENCRYPTION_KEYS to it "
            "on all of them.",
            path,
        )
    return box


def split_keys(value: str) -> list[str]:
    return [key.strip() for key in value.split(",") if key.strip()]


def _key_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SealingKeyError(f"cannot read ENCRYPTION_KEY_FILE {path}: {exc.strerror}") from None
    # Written whole under another name, then linked into place: of several processes
    # starting at once, one key wins and every process reads that one.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key() + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    except OSError as exc:
        raise SealingKeyError(
            f"cannot create ENCRYPTION_KEY_FILE {path} ({exc.strerror}); set ENCRYPTION_KEYS "
            "(`python -m app generate-key` makes a key)"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return path.read_text().strip()
