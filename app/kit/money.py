"""Amounts of money (`Decimal`) as text for people and for JSON."""

from __future__ import annotations

from decimal import Decimal


def plain(amount: Decimal) -> str:
    """An amount as plain decimal text, without an exponent or trailing zeros (`0.0013`,
    `25`, `0`)."""
    return f"{amount.normalize():f}" if amount else "0"
