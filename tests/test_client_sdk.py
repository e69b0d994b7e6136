"""The client SDK's public surface and its offline behaviour (no server involved)."""

from __future__ import annotations

import pytest
from _offline import offline_replica

import client_sdk
from client_sdk import HouseholdNotFound, Replica, ReplicaError, SyncClient
from client_sdk._replica import covers


def test_public_names_are_exactly_the_intended_ones() -> None:
    assert sorted(client_sdk.__all__) == [
        "Credentials", "HouseholdNotFound", "LiveSync", "NotEnrolled", "Progress", "Recovery",
        "Replica", "ReplicaError",
        "RepoTransport", "ServerRejected", "ServerUnavailable", "SupervisorClient", "SyncClient",
        "SyncFailed", "SyncStalled", "SyncSummary", "VatraClientError", "WrongPin", "enroll",
        "fetch_directory"]
    for name in client_sdk.__all__:
        assert getattr(client_sdk, name).__module__.startswith("client_sdk.")


def test_offline_edits_survive_reopening_the_replica(tmp_path) -> None:
    r = offline_replica(tmp_path / "tablet")
    hid = r.create_household(locality="54975", county="CJ", address="Str. Lunga 3").household_id
    with r.edit(hid) as h:
        pid = h.add_member("Ana", "Pop", "2015-04-01", "F", "child")
    reopened = offline_replica(tmp_path / "tablet")
    assert reopened.actor_id == r.actor_id
    assert reopened.household_ids() == [hid]
    assert reopened.household(hid).members()[pid]["last_name"] == "Pop"
    assert reopened.household(hid).doc.get_heads() == r.household(hid).doc.get_heads()
    assert not reopened.is_saved(hid)  # never synced


def test_unknown_and_malformed_household_ids(tmp_path) -> None:
    r = offline_replica(tmp_path / "tablet")
    with pytest.raises(HouseholdNotFound):
        r.household("2fiH6LVoDnXEUsYNHowu3UTBwJqk")
    with pytest.raises(ReplicaError):
        r.track("../../etc/passwd")


def test_a_corrupt_local_copy_is_a_clear_error(tmp_path) -> None:
    r = offline_replica(tmp_path / "tablet")
    hid = r.create_household(locality="54975", county="CJ", address="x").household_id
    (tmp_path / "tablet" / "households" / f"{hid}.automerge").write_bytes(b"\x85\x6f\x4a")
    with pytest.raises(ReplicaError, match="unreadable"):
        offline_replica(tmp_path / "tablet").household(hid)


def test_covers_means_every_local_change_is_behind_the_server_heads(tmp_path) -> None:
    r = offline_replica(tmp_path / "tablet")
    h = r.create_household(locality="54975", county="CJ", address="x")
    first = h.doc.get_heads()
    assert covers(h.doc, first)
    h.set_address("y")
    assert not covers(h.doc, first)           # the server lacks the newest change
    assert covers(h.doc, h.doc.get_heads())
    assert not covers(h.doc, [b"\x01" * 32])  # heads unknown here: cannot claim saved
    assert not covers(h.doc, [])


def test_backoff_is_jittered_exponential_and_capped(tmp_path) -> None:
    c = SyncClient(offline_replica(tmp_path / "t"), "ws://127.0.0.1:9/v1/sync",
                   backoff_base=0.5, backoff_cap=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [c.backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the range


async def test_syncing_needs_an_enrolled_replica(tmp_path) -> None:
    from client_sdk import NotEnrolled

    r = Replica(tmp_path / "t", pin="1234")
    with pytest.raises(NotEnrolled):
        await SyncClient(r, "ws://127.0.0.1:9/v1/sync", max_attempts=1).sync()


async def test_an_unreachable_server_fails_after_the_retries(tmp_path) -> None:
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    from client_sdk import Credentials, SyncFailed

    r = Replica(tmp_path / "t", pin="1234")
    r.store_credentials(Credentials("dev-x", "sw-1", "worker", SigningKey.generate(),
                                    PrivateKey.generate(), SigningKey.generate().verify_key))
    r.create_household(locality="54975", county="CJ", address="x")
    client = SyncClient(r, "ws://127.0.0.1:9/v1/sync", max_attempts=3, backoff_base=0.001)
    with pytest.raises(SyncFailed) as info:
        await client.sync()
    assert info.value.attempts == 3


def test_save_writes_only_when_the_household_changed(tmp_path) -> None:
    r = offline_replica(tmp_path / "tablet")
    hid = r.create_household(locality="54975", county="CJ", address="x").household_id
    path = tmp_path / "tablet" / "households" / f"{hid}.automerge"
    path.write_bytes(b"sentinel")  # detect any rewrite
    r.save(hid)
    assert path.read_bytes() == b"sentinel"
    with r.edit(hid) as h:
        h.set_address("y")
    assert offline_replica(tmp_path / "tablet").household(hid).to_dict()["address"] == "y"


def test_a_wrong_pin_reads_nothing_and_the_files_hold_no_plaintext(tmp_path) -> None:
    from client_sdk import WrongPin

    r = offline_replica(tmp_path / "tablet")
    hid = r.create_household(locality="54975", county="CJ", address="Str. Zamfirescu 9").household_id
    with r.edit(hid) as h:
        h.add_member("Theodora", "Zamfirescu", "2014-02-03", "F", "child")
    with pytest.raises(WrongPin):
        Replica(tmp_path / "tablet", pin="9999")
    for f in (tmp_path / "tablet").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"Zamfirescu" not in data and b"Theodora" not in data, f
    assert offline_replica(tmp_path / "tablet").household(hid).members()


def test_a_pin_is_required_and_not_trivially_short(tmp_path) -> None:
    with pytest.raises(ReplicaError, match="at least 4"):
        Replica(tmp_path / "t", pin="12")
