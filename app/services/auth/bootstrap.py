"""The first run of the embedded default: an admin and a key, so a new user can start at once."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from app.db.database import SessionFactory
from app.kit.errors import Conflict
from app.kit.settings import Settings
from app.services.auth import service

FIRST_ADMIN_EMAIL = "admin@localhost"


async def create_first_admin(sessions: SessionFactory) -> str | None:
    """Create the first admin and return its key, or None when a user already exists."""
    try:
        async with sessions.begin() as session:
            if await service.count_users(session) > 0:
                return None
            user = await service.create_user(
                session, email=FIRST_ADMIN_EMAIL, name="Administrator", is_admin=True
            )
            _, key = await service.create_api_key(session, user=user, name="first-run")
    except (Conflict, IntegrityError):
        return None  # another process of the same server got there first
    return key


def first_run_message(key: str, settings: Settings) -> str:
    base = f"http://{settings.host}:{settings.port}"
    return (
        "\n"
        f"First run: created the admin user {FIRST_ADMIN_EMAIL}. Its API key (shown only now):\n"
        f"\n    {key}\n\n"
        f"Try it: curl -s -X POST {base}/ai/prompts/ -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "local", "prompt_type": "text", "prompt_text": "Say hello"}\'\n'
    )
