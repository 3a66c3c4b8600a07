"""Routes that spend but that the SDK can't price: every POST route of openai's resources is classified,
and under a budget the spending ones are refused before anything is sent (sent as given without one)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from blackbox_sdk import AsyncOpenAI, Budget, OpenAI, PriceMissingError
from blackbox_sdk._client import UNPRICED
from servers import InstantUpstream

RESOURCES = Path(openai.__file__).parent / "resources"
POST = re.compile(r'_post\(\s*(?:path_template\(\s*)?"(/[^"]+)"')

ADMINISTRATION = ("/organization/", "/projects/")  # the admin API's keys, users, projects and limits: no model runs
# POST routes that spend nothing on a model by themselves: they store, list, cancel, configure or count.
NOT_SPENDING = {
    "/agents", "/agents/{agent_id}", "/agents/automations/{automation_id}", "/agents/automations/{automation_id}/pause",
    "/agents/environments", "/agents/environments/templates", "/agents/environments/templates/{environment_template_id}",
    "/agents/environments/{environment_id}/files", "/agents/sessions/{session_id}",
    "/assistants", "/assistants/{assistant_id}", "/audio/voice_consents", "/audio/voice_consents/{consent_id}",
    "/batches/{batch_id}/cancel", "/chat/completions/{completion_id}", "/chatkit/sessions/{session_id}/cancel",
    "/containers/{container_id}/files", "/content_provenance_checks",
    "/conversations", "/conversations/{conversation_id}", "/conversations/{conversation_id}/items",
    "/evals", "/evals/{eval_id}", "/evals/{eval_id}/runs/{run_id}/cancel", "/files",
    "/fine_tuning/alpha/graders/validate", "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
    "/fine_tuning/jobs/{fine_tuning_job_id}/pause",
    "/live/sessions/{session_id}/hangup", "/live/sessions/{session_id}/refer", "/live/sessions/{session_id}/reject",
    "/moderations",
    "/realtime/calls/{call_id}/hangup", "/realtime/calls/{call_id}/refer", "/realtime/calls/{call_id}/reject",
    "/responses/input_tokens", "/responses/{response_id}/cancel", "/responses/input_tokens?beta=true",
    "/responses/{response_id}/cancel?beta=true",
    "/skills", "/skills/{skill_id}", "/skills/{skill_id}/versions",
    "/threads", "/threads/{thread_id}", "/threads/{thread_id}/messages", "/threads/{thread_id}/messages/{message_id}",
    "/threads/{thread_id}/runs/{run_id}", "/threads/{thread_id}/runs/{run_id}/cancel",
    "/uploads", "/uploads/{upload_id}/cancel", "/uploads/{upload_id}/complete", "/uploads/{upload_id}/parts",
    "/vaults", "/vaults/{vault_id}", "/vaults/{vault_id}/credentials", "/vaults/{vault_id}/credentials/{credential_id}",
    "/vector_stores", "/vector_stores/{vector_store_id}", "/vector_stores/{vector_store_id}/file_batches",
    "/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel", "/vector_stores/{vector_store_id}/files",
    "/vector_stores/{vector_store_id}/files/{file_id}",
    "/webhook_endpoints", "/webhook_endpoints/{webhook_endpoint_id}",
    "/webhook_endpoints/{webhook_endpoint_id}/rotate_secret", "/webhook_endpoints/{webhook_endpoint_id}/test",
}
# Spending routes (a sample across kinds) as openai sends them, ids filled in.
SPENDING = [
    "/videos/edits", "/videos/extensions", "/videos/characters", "/decisions", "/containers", "/audio/voices",
    "/agents/sessions", "/agents/sessions/sess_1/events", "/agents/automations", "/agents/automations/auto_1/invocations",
    "/agents/automations/auto_1/resume", "/realtime/client_secrets", "/realtime/calls", "/realtime/calls/call_1/accept",
    "/live/sessions", "/live/sessions/ls_1/fork", "/chatkit/sessions", "/fine_tuning/alpha/graders/run",
    "/fine_tuning/jobs/ftjob_1/resume", "/images/generations", "/threads/thread_1/runs",
]


def _concrete(path: str) -> str:
    """A route with its `{placeholders}` filled in, as openai sends it."""
    return re.sub(r"\{[^}]+\}", "x_1", path)


def _refused(route: str) -> bool:
    """Whether the client refuses a POST to `route` under a budget (as `request` judges it: the path, not the query)."""
    return UNPRICED.match(_concrete(route).partition("?")[0]) is not None


def _post_routes() -> set[str]:
    """Every path a resource of the installed openai package POSTs to."""
    return {path for source in RESOURCES.rglob("*.py") for path in POST.findall(source.read_text())}


@pytest.fixture
def upstream() -> Iterator[InstantUpstream]:
    server = InstantUpstream({})  # 404 for all these routes: what reaches it was sent
    yield server
    server.close()


def test_every_post_route_of_openai_is_either_refused_under_a_budget_or_known_not_to_spend() -> None:
    routes = _post_routes()
    assert len(routes) > 100  # the scan found openai's routes
    unknown = sorted(r for r in routes if r not in NOT_SPENDING and not r.startswith(ADMINISTRATION) and not _refused(r))
    assert unknown == [], f"openai POSTs to routes nobody classified; add each to UNPRICED or NOT_SPENDING: {unknown}"
    refused = sorted(r for r in routes if (r in NOT_SPENDING or r.startswith(ADMINISTRATION)) and _refused(r))
    assert refused == []
    assert all(_refused(path) for path in SPENDING)


@pytest.mark.parametrize("path", SPENDING)
def test_a_spending_route_is_refused_under_a_budget_before_sending(upstream: InstantUpstream, tmp_path: Path, path: str) -> None:
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=Budget(total_usd=5.0, ledger=tmp_path / "ledger.db"), max_retries=0)
    with pytest.raises(PriceMissingError, match=re.escape(path)):
        client.post(path, body={}, cast_to=object)
    with pytest.raises(openai.NotFoundError):  # without the budget it is sent, and reaches the server
        client.with_options(budget=None).post(path, body={}, cast_to=object)


def test_openais_own_resources_are_refused_under_a_budget(upstream: InstantUpstream, tmp_path: Path) -> None:
    client = OpenAI(base_url=upstream.url, api_key="sk-test", budget=Budget(total_usd=5.0, ledger=tmp_path / "ledger.db"), max_retries=0)
    with pytest.raises(PriceMissingError, match="/responses"):
        client.beta.responses.create(model="gpt-5", input="Hi")  # posts to /responses?beta=true
    with pytest.raises(PriceMissingError, match="/decisions"):
        client.decisions.create(input="It rained.", model="gpt-5", questions=[{"question": "Is it about weather?"}])
    with pytest.raises(PriceMissingError, match="/realtime/client_secrets"):
        client.realtime.client_secrets.create()
    with pytest.raises(PriceMissingError, match="/agents/sessions/sess_1/events"):
        client.beta.agents.sessions.events.create("sess_1", events=[])


async def test_the_async_client_refuses_them_too(upstream: InstantUpstream, tmp_path: Path) -> None:
    client = AsyncOpenAI(base_url=upstream.url, api_key="sk-test", budget=Budget(total_usd=5.0, ledger=tmp_path / "ledger.db"), max_retries=0)
    with pytest.raises(PriceMissingError, match="/decisions"):
        await client.decisions.create(input="It rained.", model="gpt-5", questions=[{"question": "Is it about weather?"}])
    with pytest.raises(openai.NotFoundError):
        await client.with_options(budget=None).post("/decisions", body={}, cast_to=object)
    await client.close()
