"""Webhook secrets are stored sealed (encrypted) rather than in the clear (app/kit/sealing.py).

Existing secrets are sealed with the keys of the settings (ENCRYPTION_KEYS, or the key file);
the downgrade opens them again with the same keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 11:30:00
"""

from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from alembic import context, op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SELECT = "SELECT id, {column} FROM webhook_endpoints"
_UPDATE = "UPDATE webhook_endpoints SET {column} = :value WHERE id = :id"


class _Box(Protocol):
    """What this migration needs of the keys: seal a secret, open a sealed one."""

    def seal(self, secret: str) -> str: ...

    def open(self, sealed: str) -> str: ...


def _box() -> _Box:
    """The box migrations/env.py hands over (the caller's, or the settings' keys): a
    migration is history, so it must not call the application's code, which moves on."""
    box = context.config.attributes.get("secret_box")
    if box is None:
        box = context.config.attributes["open_secret_box"]()
    return box  # type: ignore[no-any-return]


def _copy(source: str, target: str, *, seal: bool) -> None:
    if context.is_offline_mode():
        return  # (an SQL script has no rows to convert; the keys are not the script's)
    bind = op.get_bind()
    rows = bind.execute(sa.text(_SELECT.format(column=source))).all()
    if not rows:
        return
    box = _box()
    for row_id, value in rows:
        converted = box.seal(value) if seal else box.open(value)
        bind.execute(sa.text(_UPDATE.format(column=target)), {"value": converted, "id": row_id})


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.add_column(sa.Column("sealed_secret", sa.String(length=255), nullable=True))
    _copy("secret", "sealed_secret", seal=True)
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("sealed_secret", existing_type=sa.String(length=255), nullable=False)
        batch.drop_column("secret")


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.add_column(sa.Column("secret", sa.String(length=64), nullable=True))
    _copy("sealed_secret", "secret", seal=False)
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.alter_column("secret", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("sealed_secret")
