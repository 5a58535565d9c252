"""`python -m app …`: serve the API, administer users, teams, keys, rate limits and budgets,
and the keys that seal stored webhook secrets (`app/kit/sealing.py`).

The commands that create keys print the new key as the last line of their output, alone, so
scripts can take it with `tail -n 1`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.base import utcnow
from app.db.database import SessionFactory, create_engine, create_session_factory
from app.db.models import TeamRole
from app.kit.errors import AppError
from app.kit.sealing import SealingKeyError, SecretBox, UnreadableSecret, generate_key
from app.kit.settings import Settings
from app.providers.catalogue import CatalogueError, load_catalogue
from app.providers.registry import ModelResolver, build_providers
from app.services import audit
from app.services.auth import admin, service
from app.services.limits import service as limits
from app.services.limits.schemas import LimitSet
from app.services.webhooks.service import reseal_secrets

_DROP_PARAMS = {"on": True, "off": False, "default": None}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve the API (HOST, PORT, WORKERS from the settings)")
    commands.add_parser(
        "worker", help="run a Celery worker (CELERY_BROKER_URL, WORKER_CONCURRENCY)"
    )

    create_user = commands.add_parser("create-user", help="create a user and an API key")
    create_user.add_argument("email")
    create_user.add_argument("--name")
    create_user.add_argument("--admin", action="store_true", help="make the user an admin")

    create_key = commands.add_parser("create-key", help="create another API key for a user")
    create_key.add_argument("email")
    create_key.add_argument("--name", default="default", help="a label for the key")
    create_key.add_argument(
        "--expires-in-days", type=float, help="the key stops working after this many days"
    )
    create_key.add_argument(
        "--drop-params",
        choices=_DROP_PARAMS,
        default="default",
        help="on: the key's requests leave out, rather than refuse, what the chosen provider "
        "cannot honour (each field left out is recorded and named in X-Dropped-Params); "
        "off: refuse it, whatever DROP_PARAMS says; default: as each request (drop_params), "
        "else DROP_PARAMS, says",
    )

    create_key.add_argument("--description", help="what the key is for")
    create_key.add_argument(
        "--team", help="scope the key to this team (by name): its prompts are billed to it"
    )
    create_key.add_argument(
        "--models", help="comma-separated: the only models the key may use (default: any)"
    )

    create_team = commands.add_parser("create-team", help="create a team")
    create_team.add_argument("name")
    create_team.add_argument("--description")

    set_member = commands.add_parser(
        "set-member", help="add a user to a team, or change their role in it"
    )
    set_member.add_argument("team", help="the team's name")
    set_member.add_argument("email")
    set_member.add_argument("--role", choices=[r.value for r in TeamRole], required=True)

    remove_member = commands.add_parser("remove-member", help="take a user out of a team")
    remove_member.add_argument("team", help="the team's name")
    remove_member.add_argument("email")

    set_key = commands.add_parser("set-key", help="change an API key's settings")
    set_key.add_argument("prefix", help="the first 11 characters of the key (pm_…)")
    set_key.add_argument(
        "--drop-params", choices=_DROP_PARAMS, required=True, help="as for create-key"
    )

    revoke = commands.add_parser("revoke-key", help="revoke an API key by its prefix")
    revoke.add_argument("prefix", help="the first 11 characters of the key (pm_…)")

    set_limits = commands.add_parser(
        "set-limits",
        help="set (replace) the rate limits and budget of a key, a user, a team or the "
        "server's default (each limit left out: none)",
    )
    _limit_target(set_limits)
    set_limits.add_argument("--rpm", type=int, help="requests per minute")
    set_limits.add_argument("--tpm", type=int, help="tokens per minute")
    set_limits.add_argument("--in-flight", type=int, help="prompts in flight at once")
    set_limits.add_argument("--budget", help="US dollars per budget period, e.g. 25.00")
    set_limits.add_argument("--period", choices=["day", "week", "month"], default="month")
    set_limits.add_argument(
        "--warn-at", type=float, default=0.8, help="the share of the budget that warns"
    )
    clear_limits = commands.add_parser(
        "clear-limits", help="remove the limits of a key, a user, a team or the default"
    )
    _limit_target(clear_limits)
    commands.add_parser("list-limits", help="print every limits row")

    commands.add_parser(
        "generate-key", help="print a new key for ENCRYPTION_KEYS (it seals webhook secrets)"
    )
    commands.add_parser(
        "reseal-secrets",
        help="seal every stored webhook secret under the first of ENCRYPTION_KEYS (after "
        "putting a new key first; the old one can then be dropped)",
    )
    return parser


def _limit_target(command: argparse.ArgumentParser) -> None:
    target = command.add_mutually_exclusive_group(required=True)
    target.add_argument("--default", action="store_true", help="the server-wide default")
    target.add_argument("--user", metavar="EMAIL")
    target.add_argument("--team", metavar="NAME")
    target.add_argument("--key", metavar="PREFIX", help="the first 11 characters (pm_…)")


async def _target(
    session: AsyncSession, args: argparse.Namespace
) -> tuple[str, uuid.UUID | None, str]:
    """(scope, subject id, a name for it) of the --default/--user/--team/--key given."""
    if args.user:
        user = await service.get_user_by_email(session, email=args.user)
        return "user", user.id, f"user {user.email}"
    if args.team:
        team = await admin.team_by_name(session, args.team)
        return "team", team.id, f"team {team.name}"
    if args.key:
        key = await service.key_by_prefix(session, args.key)
        return "key", key.id, f"API key {key.prefix}…"
    return "default", None, "the server's default"


async def _set_limits(sessions: SessionFactory, args: argparse.Namespace) -> None:
    try:
        data = LimitSet(
            rpm=args.rpm,
            tpm=args.tpm,
            max_in_flight=args.in_flight,
            budget_usd=args.budget,
            budget_period=args.period,
            warn_at=args.warn_at,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
        raise AppError(f"invalid limits: {problems}") from None
    async with sessions.begin() as session:
        scope, subject, name = await _target(session, args)
        limit = await limits.set_limits(
            session, audit.CLI, scope=scope, subject_id=subject, data=data
        )
        shown = limits.limit_out(limit).model_dump(mode="json", exclude={"updated_at"})
    print(f"Limits of {name}: {shown}")


async def _clear_limits(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        scope, subject, name = await _target(session, args)
        await limits.clear_limits(session, audit.CLI, scope=scope, subject_id=subject)
    print(f"Limits of {name} removed.")


async def _list_limits(sessions: SessionFactory, _: argparse.Namespace) -> None:
    async with sessions() as session:
        for limit in await limits.list_limits(session):
            print(limits.limit_out(limit).model_dump_json(exclude={"updated_at"}))


async def _with_session(
    settings: Settings, work: Callable[[SessionFactory], Awaitable[None]]
) -> None:
    engine = create_engine(settings)
    try:
        await work(create_session_factory(engine))
    finally:
        await engine.dispose()


async def _with_resolver(
    settings: Settings,
    work: Callable[[SessionFactory, ModelResolver, argparse.Namespace], Awaitable[None]],
    sessions: SessionFactory,
    args: argparse.Namespace,
) -> None:
    """`work` with the models as this server resolves them (a key's allowed models are
    checked against them), its provider clients closed after."""
    catalogue = load_catalogue(settings.model_catalogue_path)
    providers = build_providers(settings, catalogue)
    try:
        await work(sessions, ModelResolver(providers, catalogue), args)
    finally:
        for provider in providers.values():
            await provider.aclose()


async def _create_user(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        user = await admin.create_user(
            session, audit.CLI, email=args.email, name=args.name, is_admin=args.admin
        )
        key, plaintext = await service.create_api_key(session, user=user)
        audit.record(session, audit.CLI, "key.create", "key", key.id, after=audit.key_snapshot(key))
    role = "admin" if user.is_admin else "user"
    print(f"Created {role} {user.email} (id {user.id}) with API key {key.prefix}…")
    print("The key is shown only now; keep it somewhere safe:")
    print(plaintext)


async def _create_key(
    sessions: SessionFactory, resolver: ModelResolver, args: argparse.Namespace
) -> None:
    expires_at = None
    if args.expires_in_days is not None:
        if args.expires_in_days <= 0:
            raise AppError("--expires-in-days must be positive", code="invalid_input")
        expires_at = utcnow() + timedelta(days=args.expires_in_days)
    models = [m for m in args.models.split(",") if m.strip()] if args.models else None
    async with sessions.begin() as session:
        user = await service.get_user_by_email(session, email=args.email)
        team = await admin.team_by_name(session, args.team) if args.team else None
        key, plaintext = await admin.create_key(
            session,
            audit.CLI,
            user_id=user.id,
            name=args.name,
            description=args.description,
            team_id=team.id if team else None,
            allowed_models=models,
            expires_at=expires_at,
            drop_params=_DROP_PARAMS[args.drop_params],
            resolver=resolver,
        )
    until = f", expires {expires_at:%Y-%m-%d %H:%M} UTC" if expires_at else ""
    dropping = f", drop_params {args.drop_params}" if args.drop_params != "default" else ""
    scoped = f", team {team.name}" if team else ""
    limited = f", models {', '.join(key.allowed_models)}" if key.allowed_models else ""
    print(f"Created API key {key.prefix}… for {user.email}{until}{dropping}{scoped}{limited}.")
    print("The key is shown only now; keep it somewhere safe:")
    print(plaintext)


async def _create_team(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        team = await admin.create_team(
            session, audit.CLI, name=args.name, description=args.description
        )
    print(f"Created team {team.name} (id {team.id}).")


async def _set_member(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        team = await admin.team_by_name(session, args.team)
        user = await service.get_user_by_email(session, email=args.email)
        await admin.set_member(
            session, audit.CLI, team_id=team.id, user_id=user.id, role=TeamRole(args.role)
        )
    print(f"{user.email} is now {args.role} of team {team.name}.")


async def _remove_member(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        team = await admin.team_by_name(session, args.team)
        user = await service.get_user_by_email(session, email=args.email)
        await admin.remove_member(session, audit.CLI, team_id=team.id, user_id=user.id)
    print(f"{user.email} is no longer a member of team {team.name}.")


async def _set_key(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        key = await admin.set_key_drop_params(
            session, audit.CLI, prefix=args.prefix, drop_params=_DROP_PARAMS[args.drop_params]
        )
    print(f"API key {key.prefix}…: drop_params {args.drop_params}.")


async def _revoke_key(sessions: SessionFactory, args: argparse.Namespace) -> None:
    async with sessions.begin() as session:
        key = await admin.revoke_key(session, audit.CLI, prefix=args.prefix)
    print(f"Revoked API key {key.prefix}….")


async def _reseal_secrets(box: SecretBox, sessions: SessionFactory, _: argparse.Namespace) -> None:
    try:
        async with sessions.begin() as session:
            count = await reseal_secrets(session, box)
    except UnreadableSecret as exc:
        raise AppError(f"{exc}; nothing was changed.") from None
    print(f"{count} webhook secret(s) resealed under the first key of ENCRYPTION_KEYS.")


def _serve(settings: Settings) -> None:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # uvicorn's own format and handler for the app's loggers too.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["app"] = {
        "handlers": ["default"],
        "level": settings.log_level.upper(),
        "propagate": False,
    }
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        log_config=log_config,
        proxy_headers=True,
        http="app.api.server:HeadLimitedProtocol",  # the request head bounded as it is read
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"]).upper() or "settings"
            print(f"Configuration error: {field}: {error['msg']}", file=sys.stderr)
        return 2
    if args.command == "generate-key":
        print(generate_key())
        return 0
    commands: dict[str, Callable[[SessionFactory, argparse.Namespace], Awaitable[None]]] = {
        "create-user": _create_user,
        "create-key": partial(_with_resolver, settings, _create_key),
        "create-team": _create_team,
        "set-member": _set_member,
        "remove-member": _remove_member,
        "set-key": _set_key,
        "revoke-key": _revoke_key,
        "set-limits": _set_limits,
        "clear-limits": _clear_limits,
        "list-limits": _list_limits,
    }
    if args.command in ("serve", "worker", "reseal-secrets"):
        try:
            # Here, so that a key file is created once, before uvicorn's workers start.
            box = settings.secret_box()
        except SealingKeyError as exc:
            print(f"Configuration error: {exc}", file=sys.stderr)
            return 2
        commands["reseal-secrets"] = partial(_reseal_secrets, box)
    if args.command in ("serve", "worker"):
        try:
            load_catalogue(settings.model_catalogue_path)  # fail before uvicorn, readably
        except CatalogueError as exc:
            print(f"Configuration error: {exc}", file=sys.stderr)
            return 2
        if args.command == "worker":
            from app.worker.main import run_worker

            return run_worker(settings)
        _serve(settings)
        return 0
    command = commands[args.command]
    try:
        asyncio.run(_with_session(settings, lambda sessions: command(sessions, args)))
    except AppError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    return 0
