"""Users, teams, enrollment codes and device enrollment over HTTP (real server, real DB)."""

from __future__ import annotations

import base64
import os
from datetime import timedelta

import aiohttp
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from sync_server.app import ENGINE, SERVER_KEY
from sync_server.auth.enrollment import MAX_FAILURES_PER_ADDRESS, FailureLimiter
from sync_server.auth.identity import MAX_FAILED_ATTEMPTS, IdentityError, IdentityStore

pytestmark = pytest.mark.functional


@pytest.fixture
def ids(engine) -> IdentityStore:
    return IdentityStore(engine)


def request_body(code: str, actor: bytes | None = None) -> dict:
    return {"code": code,
            "signing_key": base64.b64encode(bytes(SigningKey.generate().verify_key)).decode(),
            "exchange_key": base64.b64encode(bytes(PrivateKey.generate().public_key)).decode(),
            "actor_ids": [(actor or os.urandom(16)).hex()]}


async def post(server, body, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(f"{server.http_url}/v1/enroll",
                                                     json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_users_roles_and_places(ids: IdentityStore) -> None:
    w = await ids.add_user("sw-ana", "worker", localities=[("54975", "CJ")])
    assert w.may_create_in("54975", "CJ") and not w.may_create_in("54984", "CJ")
    s = await ids.add_user("sup-cj", "supervisor", county="CJ")
    assert (await ids.user("sup-cj")) == s
    with pytest.raises(IdentityError, match="supervisor needs a county"):
        await ids.add_user("sup-x", "supervisor")
    with pytest.raises(IdentityError, match="role must be one of"):
        await ids.add_user("x", "mayor")
    # Households name users in their attributions: an id they cannot hold is refused,
    # and so is the server's own ("vatra"), which no device may sign as.
    for bad in ("", "ana pop", "-ana", "vatra", "x" * 65):
        with pytest.raises(IdentityError) as err:
            await ids.add_user(bad, "worker")
        assert err.value.code == "invalid-user-id"


async def test_a_code_enrolls_one_device_once(server) -> None:
    ids = IdentityStore(server.app[ENGINE])
    await ids.add_user("sw-ana", "worker", localities=[("54975", "CJ")])
    code = await ids.create_enrollment_code("sw-ana")
    status, answer = await post(server, request_body(code.code))
    assert status == 201, answer
    assert answer["user_id"] == "sw-ana" and answer["role"] == "worker"
    server_key = base64.b64decode(answer["server_signing_key"])
    assert server_key == bytes(server.app[SERVER_KEY].verify_key)
    device = await ids.device(answer["device_id"])
    assert device is not None and not device.revoked
    status, reused = await post(server, request_body(code.code))  # reused code
    assert (status, reused["code"]) == (403, "enrollment-refused")


async def test_expired_guessed_and_locked_codes_are_refused_alike(server) -> None:
    ids = IdentityStore(server.app[ENGINE])
    await ids.add_user("sw-ana", "worker")
    expired = await ids.create_enrollment_code("sw-ana", ttl=timedelta(seconds=-1))
    good = await ids.create_enrollment_code("sw-ana")
    code_id = good.code.split("-")[0]
    guessed = f"{code_id}-AAAA-AAAA-AAAA-AAAA"
    answers = [await post(server, request_body(c))
               for c in (expired.code, guessed, "NOSUCH-AAAA-AAAA-AAAA-AAAA")]
    assert {(s, a["code"], a["message"]) for s, a in answers} == {
        (403, "enrollment-refused", "enrollment code is invalid, expired or already used")}
    for _ in range(MAX_FAILED_ATTEMPTS - 1):  # the guess above was the first failure
        await post(server, request_body(guessed))
    status, _ = await post(server, request_body(good.code))  # right secret, but locked now
    assert status == 403


async def test_refusals_from_one_address_are_limited(server) -> None:
    for _ in range(MAX_FAILURES_PER_ADDRESS):
        status, _ = await post(server, request_body("NOSUCH-AAAA-AAAA-AAAA-AAAA"))
        assert status == 403
    status, answer = await post(server, request_body("NOSUCH-AAAA-AAAA-AAAA-AAAA"))
    assert (status, answer["code"]) == (429, "too-many-attempts")


async def test_behind_a_trusted_balancer_each_client_has_its_own_limit(
        database_url: str, tmp_path) -> None:
    """Before: behind a load balancer every device had the balancer's address, so ten
    wrong codes from one tablet blocked every enrollment in the county (seen while
    writing deploy/). From a balancer listed in ``VATRA_TRUSTED_PROXIES`` the limiter
    counts the forwarded client; a forwarded address from anyone else is ignored."""
    import dataclasses

    from conftest import TEST_MASTER_KEY

    from sync_server.app import VatraServer
    from sync_server.config import Settings

    wrong = request_body("NOSUCH-AAAA-AAAA-AAAA-AAAA")
    base = Settings(database_url=database_url, data_dir=tmp_path / "s", port=0,
                    master_key=TEST_MASTER_KEY)
    behind = dataclasses.replace(base, trusted_proxies=("127.0.0.0/8",))
    async with VatraServer(behind) as srv:
        tablet = {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"}
        for _ in range(MAX_FAILURES_PER_ADDRESS):
            assert (await post(srv, wrong, tablet))[0] == 403
        assert (await post(srv, wrong, tablet))[0] == 429
        other = {"X-Forwarded-For": "203.0.113.9"}
        assert (await post(srv, wrong, other))[0] == 403  # another client: its own count
        for n in range(MAX_FAILURES_PER_ADDRESS):  # made-up hops count as the balancer
            assert (await post(srv, wrong, {"X-Forwarded-For": f"guess-{n}"}))[0] == 403
        assert (await post(srv, wrong, {"X-Forwarded-For": "guess-x"}))[0] == 429
    async with VatraServer(dataclasses.replace(base, data_dir=tmp_path / "t")) as srv:
        for n in range(MAX_FAILURES_PER_ADDRESS):  # no trusted balancer: the header is
            assert (await post(srv, wrong, {"X-Forwarded-For": f"203.0.113.{n}"}))[0] == 403
        assert (await post(srv, wrong, {"X-Forwarded-For": "203.0.113.99"}))[0] == 429


def test_a_trusted_proxy_that_is_not_an_address_is_a_clear_error() -> None:
    from sync_server.config import Settings
    from sync_server.protocol.errors import ConfigError

    assert Settings.from_env({"VATRA_TRUSTED_PROXIES": "10.0.0.5, 10.1.0.0/16"}
                             ).trusted_proxies == ("10.0.0.5", "10.1.0.0/16")
    with pytest.raises(ConfigError, match=r"VATRA_TRUSTED_PROXIES: 'lb\.internal'"):
        Settings.from_env({"VATRA_TRUSTED_PROXIES": "lb.internal"})


async def test_malformed_enrollment_requests_are_refused(server) -> None:
    status, answer = await post(server, {"code": "x"})
    assert (status, answer["code"]) == (400, "malformed-message")


def test_failure_limiter_window_slides() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window=10, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.blocked("a") and not limiter.blocked("b")
    now[0] = 11
    assert not limiter.blocked("a")


async def test_teams_and_revocation(ids: IdentityStore, store) -> None:
    from sync_server.store.contract import HouseholdRecord

    await ids.add_user("sw-ana", "worker", localities=[("54975", "CJ")])
    await ids.add_user("nurse-ioana", "worker", localities=[("54975", "CJ")])
    await ids.add_user("sw-bv", "worker", localities=[("40198", "BV")])
    await ids.add_user("sup-cj", "supervisor", county="CJ")
    await store.create_household(HouseholdRecord("2fiH6LVoDnXEUsYNHowu3UTBwJqk", "54975", "CJ"), [],
                                 team=["sw-ana", "nurse-ioana", "ghost"])
    assert await ids.team("2fiH6LVoDnXEUsYNHowu3UTBwJqk") == ["nurse-ioana", "sw-ana"]
    # who may be on a team there: workers of the locality, no one else
    assert await ids.ineligible_team_members(
        ["sw-ana", "nurse-ioana", "sw-bv", "sup-cj", "ghost"], "54975", "CJ") == [
        "ghost", "sup-cj", "sw-bv"]
    code = await ids.create_enrollment_code("sw-ana")
    dev = await ids.enroll(code.code, signing_key=os.urandom(32), exchange_key=os.urandom(32),
                           actor_ids=[os.urandom(16)])
    assert await ids.revoke_device(dev.id)
    assert not await ids.revoke_device(dev.id)
    assert (await ids.device(dev.id)).revoked


async def test_the_enrollment_exchange_is_the_one_the_openapi_document_describes(
        server) -> None:
    """Issue 15: a client written from the docs alone had to guess the enrollment request
    (field names, base64 or hex, the actor id's form) and its 201 body; every wrong guess
    cost one of the ten refusals allowed per address. ``/v1/openapi.json`` now gives both
    schemas: the request the SDK sends and the answer the server gives conform to them."""
    import aiohttp
    import jsonschema

    async with aiohttp.ClientSession() as s, s.get(f"{server.http_url}/v1/openapi.json") as r:
        document = await r.json()
    operation = document["paths"]["/v1/enroll"]["post"]
    schemas = document["components"]["schemas"]
    request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    answer_ref = operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]

    def schema(ref: str) -> dict:
        return schemas[ref.rsplit("/", 1)[1]]

    ids = IdentityStore(server.app[ENGINE])
    await ids.add_user("sw-ana", "worker", localities=[("54975", "CJ")])
    body = request_body((await ids.create_enrollment_code("sw-ana")).code)
    jsonschema.validate(body, schema(request_ref))
    status, answer = await post(server, body)
    assert status == 201
    jsonschema.validate(answer, schema(answer_ref))
    with pytest.raises(jsonschema.ValidationError):  # the check can fail: an actor id
        jsonschema.validate({**body, "actor_ids": ["ACTOR-1"]}, schema(request_ref))
