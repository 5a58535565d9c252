"""API key material.

A key is `pm_` followed by 43 URL-safe characters (256 random bits). Its first 11 characters
are the prefix people see in listings and pass to `revoke-key`. Only SHA-256 of the key is
stored: with 256 bits of entropy a fast hash is safe (a slow password hash protects guessable
secrets, which these are not), and it lets every request find its key in one indexed lookup.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_MARKER = "pm_"
PREFIX_LENGTH = 11


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    prefix: str
    key_hash: str


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_key() -> NewKey:
    plaintext = KEY_MARKER + secrets.token_urlsafe(32)
    return NewKey(plaintext, plaintext[:PREFIX_LENGTH], hash_key(plaintext))
