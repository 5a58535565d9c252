"""The fast paths (app/api/fast_paths.py) sit in front of the middleware stack and the routes'
dependencies, so whatever those do, the fast paths must do too (or hand the request to the
route). These tests pin both lists against what the fast paths say they do about each: adding
a middleware, or a dependency to a fast-pathed route, fails here until `fast_paths.MIDDLEWARE`
or `fast_paths.DEPENDENCIES` says how the fast path meets it. (That each per-request policy
then behaves the same on both paths is proved by its own tests, on both.)"""

from __future__ import annotations

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.api import chat, fast_paths, prompts
from app.main import create_app
from tests.conftest import make_settings


def _names(dependant: Dependant) -> set[str]:
    """Every dependency under `dependant` (by its function's or class's name) and every
    header, query and cookie parameter (by name): what a request must get past."""
    names = {p.name for p in (*dependant.header_params, *dependant.query_params)}
    names |= {p.name for p in dependant.cookie_params}
    for sub in dependant.dependencies:
        call = sub.call
        names.add(getattr(call, "__name__", type(call).__name__))
        names |= _names(sub)
    return names


def _app(tmp_path):
    return create_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/parity.db"))


def test_every_middleware_is_met_by_the_fast_paths(tmp_path):
    app = _app(tmp_path)
    middleware = {m.cls.__name__ for m in app.user_middleware}  # type: ignore[attr-defined]
    assert middleware == set(fast_paths.MIDDLEWARE)


def test_every_dependency_of_a_fast_pathed_route_is_met_by_the_fast_paths(tmp_path):
    app = _app(tmp_path)
    # Dependencies given to the app as a whole would apply to every route.
    assert app.router.dependencies == []
    routes = {
        route.path: route
        for router in (prompts.router, chat.router)
        for route in router.routes
        if isinstance(route, APIRoute) and "POST" in route.methods
    }
    assert set(fast_paths.DEPENDENCIES) <= set(routes)
    for path, declared in fast_paths.DEPENDENCIES.items():
        assert _names(routes[path].dependant) == set(declared), path


def test_the_fast_paths_take_only_the_pinned_routes():
    assert {path.rstrip("/") for path in fast_paths.ROUTES} == {
        path.rstrip("/") for path in fast_paths.DEPENDENCIES
    }
