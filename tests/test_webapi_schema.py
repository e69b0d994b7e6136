"""Schemathesis checks the web read API against the OpenAPI document the server serves:
every generated request (signed by a real enrolled device) gets an answer that conforms
to the documented status codes, headers and schemas, and none is a server error.

The server runs in the test's event loop; Hypothesis and schemathesis (synchronous,
``requests``) run in a worker thread, so the loop keeps serving while they call it.
``VATRA_SCHEMATHESIS_EXAMPLES`` raises the number of examples per endpoint and mode.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import aiohttp
import pytest
import requests
import schemathesis
from _scenes import active_household
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from client_sdk import SyncClient
from sync_server.app import PROJECTOR
from sync_server.protocol.http_auth import sign

pytestmark = pytest.mark.functional

EXAMPLES = int(os.environ.get("VATRA_SCHEMATHESIS_EXAMPLES", "30"))
WEB_PATHS = ("/v1/web/households", "/v1/web/households/{household_id}", "/v1/web/summary",
             "/v1/web/persons", "/v1/web/households/{household_id}/assessments/compare",
             "/v1/web/households/{household_id}/annex-691",
             "/v1/web/households/{household_id}/annex-691.pdf", "/v1/web/households.csv",
             "/v1/web/map", "/v1/web/services", "/v1/web/persons.csv", "/v1/web/services.csv",
             "/v1/web/households/{household_id}/providers")


class DeviceAuth(requests.auth.AuthBase):
    """Signs each request as it goes on the wire: method, path and query as sent, body.

    Schemathesis fills the documented ``Authorization`` header with a generated value,
    which this replaces with a real signature; a negative case that leaves the header
    out on purpose goes out unsigned (and must be refused).
    """

    def __init__(self, replica) -> None:
        self.device_id = replica.credentials.device_id
        self.key = replica.credentials.signing_key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if "Authorization" not in r.headers:
            return r
        body = r.body.encode() if isinstance(r.body, str) else (r.body or b"")
        r.headers["Authorization"] = sign(self.device_id, self.key, r.method or "GET",
                                          r.path_url, body)
        return r


def signature_accepted(ctx, response, case) -> None:
    """Every generated request carries a valid signature: a 401 would mean the server and
    the client disagree about the signed path (e.g. how a query string is encoded)."""
    if "Authorization" in response.request.headers:
        assert response.status_code != 401, f"signed request refused: {response.text}"


def code_missing(case: schemathesis.Case) -> bool:
    """The one rule OpenAPI 3.0 cannot state: a locality or county summary needs a code."""
    query = case.query or {}
    return (case.operation.path == "/v1/web/summary"
            and query.get("level") in ("locality", "county") and "code" not in query)


MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def run_cases(schema, path: str, base_url: str, auth: DeviceAuth, modes=MODES,
              **fixed) -> Counter[tuple[str, int]]:
    """Generate and check cases for one operation in each mode: (mode, status) counts."""
    seen: Counter[tuple[str, int]] = Counter()
    operation = schema[path]["GET"]
    for mode in modes:

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        def check(case: schemathesis.Case) -> None:
            generated = case.meta.generation.mode
            if generated.is_positive and code_missing(case):
                response = case.call_and_validate(base_url=base_url, auth=auth,
                                                  additional_checks=[signature_accepted],
                                                  excluded_checks=[positive_data_acceptance])
                assert (response.status_code, response.json()["code"]) == (400, "code-required")
            else:
                response = case.call_and_validate(base_url=base_url, auth=auth,
                                                  additional_checks=[signature_accepted])
            seen[generated.value, response.status_code] += 1

        check()
    return seen


async def test_the_web_api_conforms_to_its_openapi_document(server, provision, subtests) -> None:
    hid, pid, [ana] = await active_household(server, provision)
    with ana.edit(hid) as e:
        aid = e.start_assessment(at="2026-03-01T10:00:00Z")
        e.record_answers(aid, pid, {"family_doctor_registered": False})
        e.complete_assessment(aid, at="2026-03-01T11:00:00Z")
        e.plan_service("information", pid, "child_no_family_doctor", "2020-01-10")
        e.request_change("change_presence", {"person_id": pid, "presence": "moved"}, "moved")
    await SyncClient(ana, server.url).sync()
    await server.app[PROJECTOR].drain_all()
    national = await provision.tablet("nat", role="national", county=None)

    async with aiohttp.ClientSession() as session, session.get(
            f"{server.http_url}/v1/openapi.json") as resp:
        document = await resp.json()
    schema = schemathesis.openapi.from_dict(document).include(
        path_regex="^/v1/web/")  # the other operations change state: not fuzzed here
    for caller in (national, ana):
        auth = DeviceAuth(caller)
        who = caller.credentials.user_id
        for path in WEB_PATHS:
            with subtests.test(caller=who, path=path):
                seen = await asyncio.to_thread(run_cases, schema, path, server.http_url, auth)
                assert sum(n for (mode, _), n in seen.items() if mode == "negative") > 0
                if path == "/v1/web/households":  # any schema-valid list request is served
                    assert {status for mode, status in seen if mode == "positive"} == {200}
        with subtests.test(caller=who, path="a household's profile"):
            seen = await asyncio.to_thread(run_cases, schema, WEB_PATHS[1], server.http_url,
                                           auth, MODES[:1], path_parameters={"household_id": hid})
            assert set(seen) == {("positive", 200)}
