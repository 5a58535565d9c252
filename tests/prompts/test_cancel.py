"""`POST /ai/prompts/{id}/cancel`: a pending prompt is cancelled at once and never runs; a
running one is stopped by whichever process holds it, its abandoned call on the record; a
finished one is a 409. Nothing ends `cancelled` with a response."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.database import SessionFactory, create_engine, create_session_factory
from app.db.models import PromptRequest, PromptResponse, PromptStatus
from app.engine.executor import execute_prompt
from app.engine.recorder import Recorder
from app.engine.records import Claim
from app.engine.runners import EmbeddedRunner
from app.engine.runtime import open_runtime
from app.services.auth import service as auth_service
from tests.conftest import Api, make_settings, migrate, running_api
from tests.mocks.openai_server import MockOpenAI
from tests.prompts.test_validation import assert_problem
from tests.records import new_prompt, openai_prompt, seed, successful_call


async def _user(api: Api) -> tuple[uuid.UUID, dict[str, str]]:
    async with api.sessions() as session:
        user = await auth_service.create_user(session, email=f"{uuid.uuid4().hex[:10]}@example.com")
        _, key = await auth_service.create_api_key(session, user=user)
        await session.commit()
    return user.id, {"Authorization": f"Bearer {key}"}


async def _cancel(api: Api, headers: dict[str, str], prompt_id: str) -> Any:
    return await api.client.post(f"/ai/prompts/{prompt_id}/cancel", headers=headers)


def _assert_requested_elsewhere(response: Any) -> None:
    """202 while the runner of another process has yet to stop it (a 200 only if its runner
    looked for cancellations between the request being recorded and the answer)."""
    body = response.json()
    assert (response.status_code, body["status"]) in {(202, "running"), (200, "cancelled")}, body
    assert body["cancel_requested_at"]


async def _wait_running(api: Api, headers: dict[str, str], prompt_id: str) -> None:
    for _ in range(500):
        body = (await api.client.get(f"/ai/prompts/{prompt_id}", headers=headers)).json()
        if body["status"] == "running":
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} never started running")


async def test_a_pending_prompt_is_cancelled_at_once_and_never_runs(
    fresh_database: str, mock_openai: MockOpenAI
):
    await migrate(fresh_database)
    # One runner slot, taken by a prompt that hangs: the next prompt stays pending.
    settings = make_settings(fresh_database, mock_openai, runner_concurrency=1)
    async with running_api(settings) as api:
        headers = await api.new_user()
        tag = uuid.uuid4().hex[:8]
        blocker = await api.submit(headers, model=f"openai/hang-blocker-{tag}")
        await _wait_running(api, headers, blocker["id"])
        waiting = await api.submit(headers, model=f"openai/cancel-pending-{tag}")

        response = await _cancel(api, headers, waiting["id"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "cancelled"
        assert body["cancel_requested_at"] and body["finished_at"]
        assert body["executions"] == 0 and body["attempts"] == []
        assert body["response"] is None and body["error"] is None

        # The slot frees up and the runner takes the queued prompt: nothing left to claim.
        assert (await _cancel(api, headers, blocker["id"])).status_code == 200
        assert (
            await api.app.state.services.recorder.claim(uuid.UUID(waiting["id"]), lease_seconds=30)
            is None
        )
        await api.app.state.services.dispatcher.dispatch(uuid.UUID(waiting["id"]))
        await asyncio.sleep(0.3)
        after = (await api.client.get(f"/ai/prompts/{waiting['id']}", headers=headers)).json()
    assert after["status"] == "cancelled" and after["executions"] == 0
    assert mock_openai.calls_for(f"cancel-pending-{tag}") == []


async def test_a_running_prompt_is_stopped_and_its_call_recorded(
    api: Api, backend: str, mock_openai: MockOpenAI
):
    headers = await api.new_user()
    upstream = f"hang-cancel-{uuid.uuid4().hex[:8]}"
    created = await api.submit(headers, model=f"openai/{upstream}")
    await _wait_running(api, headers, created["id"])

    response = await _cancel(api, headers, created["id"])
    # Embedded, the prompt runs in this process and is stopped before the answer; a Celery
    # worker finds the request in the database within about a second.
    if backend == "celery":
        _assert_requested_elsewhere(response)
    else:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"

    done = await api.wait_final(headers, created["id"], timeout=5)
    assert done["status"] == "cancelled" and done["response"] is None and done["error"] is None
    assert done["executions"] == 1
    assert [(a["outcome"], a["error_code"]) for a in done["attempts"]] == [
        ("cancelled", "cancelled")
    ]
    assert len(mock_openai.calls_for(upstream)) == 1

    again = await _cancel(api, headers, created["id"])
    body = assert_problem(again, 409, "already_finished")
    assert body["prompt_status"] == "cancelled" and "cancelled" in body["detail"]


async def test_a_finished_prompt_cannot_be_cancelled(api: Api):
    headers = await api.new_user()
    created = await api.submit(headers, model="openai/gpt-4o-mini")
    done = await api.wait_final(headers, created["id"])
    assert done["status"] == "completed"

    response = await _cancel(api, headers, created["id"])
    body = assert_problem(response, 409, "already_finished")
    assert body["prompt_status"] == "completed" and "completed" in body["detail"]
    after = (await api.client.get(f"/ai/prompts/{created['id']}", headers=headers)).json()
    assert after["status"] == "completed" and after["cancel_requested_at"] is None
    assert after["response"] is not None


async def test_someone_elses_or_a_missing_prompt_is_404(api: Api):
    owner_id, owner = await _user(api)
    _, stranger = await _user(api)
    # It hangs if it runs, so it is still pending or running when its owner cancels it.
    prompt = new_prompt(f"hang-owner-{uuid.uuid4().hex[:8]}", user_id=owner_id)
    await api.app.state.services.recorder.create_prompt(prompt)

    assert_problem(await _cancel(api, stranger, str(prompt.id)), 404, "not_found")
    assert_problem(await _cancel(api, stranger, str(uuid.uuid4())), 404, "not_found")
    mine = (await api.client.get(f"/ai/prompts/{prompt.id}", headers=owner)).json()
    assert mine["status"] != "cancelled" and mine["cancel_requested_at"] is None
    assert (await _cancel(api, owner, str(prompt.id))).status_code in (200, 202)


async def test_a_malformed_id_is_422_and_a_key_is_required(api: Api):
    headers = await api.new_user()
    body = assert_problem(await _cancel(api, headers, "not-a-uuid"), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["path", "prompt_id"]
    response = await api.client.post(f"/ai/prompts/{uuid.uuid4()}/cancel")
    assert response.status_code == 401


async def test_a_prompt_running_in_another_process_is_stopped_by_its_runner(
    api: Api, database_url: str, mock_openai: MockOpenAI
):
    headers = await api.new_user()
    upstream = f"hang-elsewhere-{uuid.uuid4().hex[:8]}"
    # A second server on the same database stands in for another process: it runs the
    # prompt, the first one takes the cancellation.
    async with running_api(make_settings(database_url, mock_openai)) as other:
        created = await other.submit(headers, model=f"openai/{upstream}")
        await _wait_running(other, headers, created["id"])

        started = asyncio.get_running_loop().time()
        _assert_requested_elsewhere(await _cancel(api, headers, created["id"]))

        done = await api.wait_final(headers, created["id"], timeout=5)
        elapsed = asyncio.get_running_loop().time() - started
    assert done["status"] == "cancelled" and done["response"] is None
    assert elapsed < 3, elapsed
    assert [a["outcome"] for a in done["attempts"]] == ["cancelled"]
    assert len(mock_openai.calls_for(upstream)) == 1


async def test_the_cancel_endpoint_is_documented(api: Api):
    spec = (await api.client.get("/openapi.json")).json()
    operation = spec["paths"]["/ai/prompts/{prompt_id}/cancel"]["post"]
    assert operation["summary"] and "already_finished" in operation["description"]
    assert {"200", "202", "401", "404", "409", "422"} <= set(operation["responses"])
    assert "already_finished" in operation["responses"]["409"]["description"]
    assert operation["security"] == [{"ApiKey": []}]


# The recorder, on each database: the paths that would hand a prompt back to `pending`.


async def _recorder_with(url: str, *prompts: PromptRequest) -> tuple[Recorder, AsyncEngine]:
    await migrate(url)
    engine = create_engine(make_settings(url))
    sessions = create_session_factory(engine)
    await seed(sessions, list(prompts))
    return Recorder(engine), engine


async def _status(sessions: SessionFactory, prompt_id: uuid.UUID) -> tuple[str, int]:
    async with sessions() as session:
        row = await session.get(PromptRequest, prompt_id)
        responses = await session.scalar(
            select(func.count())
            .select_from(PromptResponse)
            .where(PromptResponse.prompt_id == prompt_id)
        )
    assert row is not None and responses is not None
    return row.status, responses


async def test_a_cancelled_prompt_is_never_handed_back_to_pending(fresh_database: str):
    lost, stopping, untouched = (openai_prompt(name) for name in ("lost", "stop", "ok"))
    recorder, engine = await _recorder_with(fresh_database, lost, stopping, untouched)
    sessions = create_session_factory(engine)
    try:
        user_id = lost.user_id
        claims = {}
        for prompt, lease in ((lost, 0.05), (stopping, 30), (untouched, 0.05)):
            claim = await recorder.claim(prompt.id, lease_seconds=lease)
            assert claim is not None
            claims[prompt.id] = claim
        assert await recorder.cancel(lost.id, user_id=user_id) == PromptStatus.RUNNING
        assert await recorder.cancel(stopping.id, user_id=user_id) == PromptStatus.RUNNING
        assert set(await recorder.cancel_requested(list(claims))) == {lost.id, stopping.id}

        await asyncio.sleep(0.1)
        recovered = await recorder.recover_expired(max_attempts=5)  # its runner died
        assert recovered.cancelled == 1 and recovered.requeued == [untouched.id]
        await recorder.release([claims[stopping.id]])  # its runner shut down

        assert await _status(sessions, lost.id) == (PromptStatus.CANCELLED, 0)
        assert await _status(sessions, stopping.id) == (PromptStatus.CANCELLED, 0)
        assert await _status(sessions, untouched.id) == (PromptStatus.PENDING, 0)
        assert await recorder.cancel(lost.id, user_id=user_id) == PromptStatus.CANCELLED
        assert await recorder.cancel(lost.id, user_id=uuid.uuid4()) is None
    finally:
        await recorder.aclose()
        await engine.dispose()


async def test_a_cancel_and_an_answer_never_both_win(fresh_database: str):
    cancelled_first = openai_prompt("race-cancel")
    answered_first = openai_prompt("race-answer")
    recorder, engine = await _recorder_with(fresh_database, cancelled_first, answered_first)
    sessions = create_session_factory(engine)
    attempt, answer = successful_call("race")
    try:
        first = await recorder.claim(cancelled_first.id, lease_seconds=30)
        second = await recorder.claim(answered_first.id, lease_seconds=30)
        assert first is not None and second is not None
        assert await recorder.finish_cancelled(first) is True
        assert await recorder.finish(first, attempt=attempt, response=answer) is False
        assert await recorder.finish(second, attempt=attempt, response=answer) is True
        assert await recorder.finish_cancelled(second) is False
        assert await _status(sessions, cancelled_first.id) == (PromptStatus.CANCELLED, 0)
        assert await _status(sessions, answered_first.id) == (PromptStatus.COMPLETED, 1)
    finally:
        await recorder.aclose()
        await engine.dispose()


class _SlowToStore(Recorder):
    """Takes a while to store an outcome, so that a cancel can arrive meanwhile."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.storing = asyncio.Event()

    async def finish(self, claim: Claim, **outcome: Any) -> bool:
        self.storing.set()
        await asyncio.sleep(0.2)
        return await super().finish(claim, **outcome)


async def test_a_cancel_that_arrives_while_the_answer_is_stored_keeps_the_answer(
    fresh_database: str, mock_openai: MockOpenAI
):
    await migrate(fresh_database)
    async with open_runtime(make_settings(fresh_database, mock_openai)) as runtime:
        recorder = _SlowToStore(runtime.engine)
        execution = dataclasses.replace(runtime.execution, recorder=recorder)
        runner = EmbeddedRunner(
            partial(execute_prompt, execution=execution),
            recorder=recorder,
            concurrency=1,
            lease_seconds=30,
        )
        async with runtime.sessions() as session:
            user = await auth_service.create_user(
                session, email=f"{uuid.uuid4().hex[:8]}@example.com"
            )
            await session.commit()
        prompt = new_prompt(f"answered-{uuid.uuid4().hex[:8]}", user_id=user.id)
        await recorder.create_prompt(prompt)
        await runner.start()
        try:
            await runner.dispatch(prompt.id)
            await asyncio.wait_for(recorder.storing.wait(), 10)
            assert await recorder.cancel(prompt.id, user_id=user.id) == PromptStatus.RUNNING
            await runner.cancel(prompt.id)  # returns once the runner is done with it
        finally:
            await runner.stop()
        status = await _status(runtime.sessions, prompt.id)
    # The provider had answered: the answer and its cost are kept, the cancel came too late.
    assert status == (PromptStatus.COMPLETED, 1)
