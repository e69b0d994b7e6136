"""Vatra's load test: the four users of a county deployment, as Locust users.

    locust -f loadtests/locustfile.py --vatra-plan DIR --headless -u 40 -r 40 -t 60s

``DIR`` is a plan made by ``python -m loadtests.provision`` (docs/capacity.md). Each
Locust user claims one provisioned, enrolled device of its scenario and drives it the
way the device would, over the real protocol and the real end-to-end session:

- :class:`ReturningTablet` (the morning rush): comes back from offline visits with
  ``--vatra-edits`` edits on every household of its caseload (notes, answers, a member
  detail), sometimes a change request and a newly registered household, and syncs the
  whole caseload in one session with :class:`client_sdk.SyncClient`. Spawn them all at
  once (``-r`` = ``-u``) for the rush; they return every ``--vatra-return-every`` s.
- :class:`CoEditor`: two team members with one household open live
  (:class:`loadtests.live.LiveSession`), each appending a visit note every
  ``--vatra-edit-every`` s or so; measured: the edit saved on the server, and the edit
  reaching the teammate's tablet (both teammates in one Locust process: with
  ``--processes N``, a pair split over two processes reports no teammate figure).
- :class:`Supervisor`: lists the county's pending change requests and approves them over
  the signed HTTP API.
- :class:`WebReader`: the web tier reading household lists, profiles and summaries.

The plan sets how many users each of the last three scenarios has (``fixed_count``);
returning tablets take the rest of ``-u``. Locust's statistics show, besides the HTTP
calls: ``sync`` (a tablet's whole sync; its size is the bytes sent and received),
``live`` (edit saved; teammate received), ``refusal`` (one row per refusal code, each a
failure), ``retried`` (a sync or live edit answered with a retryable code such as
``storage-failure`` and done again: nothing lost, counted, not a failure) and ``server``
(the projection lag, sampled every second from the instances' ``/metrics``, or from
``--vatra-metrics``). Any failure makes Locust exit with status 1.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, User, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import LocalRunner, WorkerRunner
from prometheus_client.parser import text_string_to_metric_families

from client_sdk import Replica, ServerRejected, SyncClient
from loadtests import bridge
from loadtests.live import LiveSession
from loadtests.plan import CO_EDITING, PIN, RETURNING, SUPERVISOR, WEB, Claims, Device, Plan, Target
from sync_server.protocol.http_auth import sign

log = logging.getLogger("loadtests")

#: Seconds one tablet's sync may take before it counts as failed.
SYNC_TIMEOUT = 120.0


class _Run:
    """What every user of this process shares: the plan and the claims on its devices."""

    plan: Plan
    claims: Claims
    root: Path
    bytes_up = 0
    bytes_down = 0
    refusals: collections.Counter[str] = collections.Counter()


RUN = _Run()


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--vatra-plan", env_var="VATRA_PLAN", default="",
                        help="the directory python -m loadtests.provision made")
    parser.add_argument("--vatra-edits", type=int, default=3, env_var="VATRA_EDITS",
                        help="offline edits per household per return")
    parser.add_argument("--vatra-return-every", type=float, default=60.0,
                        env_var="VATRA_RETURN_EVERY",
                        help="seconds between a tablet's returns")
    parser.add_argument("--vatra-request-share", type=float, default=0.2,
                        env_var="VATRA_REQUEST_SHARE",
                        help="share of returns that file a change request")
    parser.add_argument("--vatra-register-share", type=float, default=0.2,
                        env_var="VATRA_REGISTER_SHARE",
                        help="share of returns that register a new household")
    parser.add_argument("--vatra-metrics", default="", env_var="VATRA_METRICS",
                        help="comma-separated /metrics URLs to sample the projection lag "
                             "from (default: each instance of the plan; 'off': none)")
    parser.add_argument("--vatra-edit-every", type=float, default=1.0,
                        env_var="VATRA_EDIT_EVERY",
                        help="mean seconds between a co-editor's live edits")


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None or not opts.vatra_plan:
        raise SystemExit("--vatra-plan DIR is required (python -m loadtests.provision DIR …)")
    RUN.root = Path(opts.vatra_plan)
    RUN.plan = Plan.load(RUN.root)
    RUN.claims = Claims(RUN.root, RUN.plan)
    for cls, scenario in ((CoEditor, CO_EDITING), (Supervisor, SUPERVISOR), (WebReader, WEB)):
        # as many users as the plan has devices (none: the scenario does not run)
        cls.fixed_count = len(RUN.plan.of(scenario))
        cls.weight = 1 if cls.fixed_count else 0


def _fire(environment: Environment, kind: str, name: str, seconds: float, size: int = 0,
          exception: BaseException | None = None) -> None:
    environment.events.request.fire(request_type=kind, name=name,
                                    response_time=seconds * 1000.0, response_length=size,
                                    exception=exception, context={})


def _claim(user: User, scenario: str) -> tuple[Device, Target, Replica]:
    claimed = RUN.claims.claim(scenario)
    if claimed is None:
        _fire(user.environment, "claim", scenario, 0.0,
              exception=RuntimeError(f"no free {scenario} device: provision more"))
        raise StopUser()
    index, device = claimed
    target = RUN.plan.targets[index % len(RUN.plan.targets)]
    # Opening a replica unseals its keys (a deliberate key derivation): keep it off the
    # greenlets' hub, on the asyncio thread.
    replica = bridge.call(_open(RUN.root / device.path))
    return device, target, replica


async def _open(path: Path) -> Replica:
    return Replica(path, pin=PIN)


class ReturningTablet(User):
    """A tablet back from a day of offline visits: edits everywhere, one sync."""

    weight = 1

    def wait_time(self) -> float:
        every = float(self.environment.parsed_options.vatra_return_every)
        return random.uniform(0.8 * every, 1.2 * every)

    def on_start(self) -> None:
        self.device, self.target, self.replica = _claim(self, RETURNING)
        self.visits = 0

    def on_stop(self) -> None:
        RUN.claims.release(self.device)

    @task
    def come_back(self) -> None:
        opts = self.environment.parsed_options
        self.visits += 1
        try:
            seconds, summary = bridge.call(self._return(
                opts.vatra_edits, random.random() < opts.vatra_request_share,
                random.random() < opts.vatra_register_share), SYNC_TIMEOUT)
        except Exception as exc:  # the sync failed as a whole: unavailable, timed out
            _fire(self.environment, "sync", "tablet returns", SYNC_TIMEOUT, exception=exc)
            return
        if summary.attempts > 1:  # the SDK retried (connection refused, storage-failure)
            _fire(self.environment, "retried", "tablet sync", 0.0)
        RUN.bytes_up += summary.bytes_sent
        RUN.bytes_down += summary.bytes_received
        for refusal in summary.rejected:
            RUN.refusals[refusal.code] += 1
            _fire(self.environment, "refusal", refusal.code, 0.0, exception=refusal)
        failed = (ServerRejected("unavailable", f"{len(summary.unavailable)} households")
                  if summary.unavailable else None)
        _fire(self.environment, "sync", "tablet returns", seconds,
              summary.bytes_sent + summary.bytes_received, failed)

    async def _return(self, edits: int, request: bool, register: bool) -> tuple[float, Any]:
        """The offline day (untimed), then the sync (timed)."""
        r, n = self.replica, self.visits
        for hid in list(r.household_ids()):
            with r.edit(hid) as h:
                members = list(h.members())
                assessments = list(h.to_dict()["assessments"])
                for e in range(edits):
                    if e % 3 == 1 and members and assessments:
                        h.record_answers(assessments[0], members[-1], {
                            "unexcused_absences_last_month": (n + e) % 32,
                            "household_observations": f"observatii la vizita {n}.{e}"})
                    elif e % 3 == 2:
                        h.set_address(f"Str. Probei nr. {n}-{e}")
                    else:
                        h.append_activity("visit", f"vizita {n}.{e}: discutie cu familia")
                if request and members:
                    h.request_change("change_presence",
                                     {"person_id": members[0],
                                      "presence": "absent" if n % 2 else "present"},
                                     "a plecat la munca in strainatate")
                    request = False
        if register:
            h = r.create_household(locality=RUN.plan.locality, county=RUN.plan.county,
                                   address=f"Str. Noua nr. {n}")
            with r.edit(h.household_id) as new:
                new.add_member("Andrei", "Marin", "2014-05-05", "M", "head")
        started = time.perf_counter()
        summary = await SyncClient(r, self.target.url).sync()
        return time.perf_counter() - started, summary


class CoEditor(User):
    """A team member with the shared household open, editing it live."""

    fixed_count = 0

    def wait_time(self) -> float:
        every = float(self.environment.parsed_options.vatra_edit_every)
        return random.uniform(0.5 * every, 1.5 * every)

    def on_start(self) -> None:
        self.device, self.target, replica = _claim(self, CO_EDITING)
        self.session = LiveSession(replica, self.target.url, self.device.households[0])
        self.edits = 0
        try:
            bridge.call(self.session.open(), SYNC_TIMEOUT)
        except Exception as exc:
            _fire(self.environment, "live", "session opened", 0.0, exception=exc)
            raise StopUser() from exc

    def on_stop(self) -> None:
        bridge.call(self.session.close(), 10)
        RUN.claims.release(self.device)

    @task
    def edit(self) -> None:
        self.edits += 1
        try:
            seconds = bridge.call(self.session.edit(f"nota live {self.edits}"), SYNC_TIMEOUT)
        except Exception as exc:
            _fire(self.environment, "live", "edit saved", 0.0, exception=exc)
            raise StopUser() from exc
        _fire(self.environment, "live", "edit saved", seconds)
        while self.session.pushes:
            _fire(self.environment, "live", "teammate received", self.session.pushes.popleft())
        while self.session.retries:  # answered by syncing again: counted, not a failure
            _fire(self.environment, "retried", self.session.retries.popleft(), 0.0)


class _Signed(HttpUser):
    """An HTTP user whose every request is signed by its enrolled device."""

    abstract = True
    host = "http://placeholder.invalid"  # every request names its instance's full URL
    scenario = ""

    def on_start(self) -> None:
        self.device, self.target, replica = _claim(self, self.scenario)
        creds = replica.credentials
        assert creds is not None
        self.creds = creds

    def on_stop(self) -> None:
        RUN.claims.release(self.device)

    def signed(self, method: str, path_qs: str, name: str, body: bytes = b"") -> Any:
        headers = {"Authorization": sign(self.creds.device_id, self.creds.signing_key, method,
                                         path_qs, body),
                   "Content-Type": "application/json"}
        with self.client.request(method, self.target.http_url + path_qs, data=body,
                                 headers=headers, name=name, catch_response=True) as resp:
            if resp.status_code >= 300:
                resp.failure(f"{resp.status_code} {resp.text[:200]}")
                return None
            return resp.json()


class Supervisor(_Signed):
    """A county supervisor deciding the change requests the tablets filed."""

    fixed_count = 0
    scenario = SUPERVISOR
    wait_time = between(1, 3)

    @task
    def decide(self) -> None:
        listed = self.signed("GET", "/v1/requests?status=pending", "supervisor: pending requests")
        for r in (listed or {}).get("requests", [])[:5]:
            self.signed("POST", f"/v1/households/{r['household_id']}/requests/"
                        f"{r['request_id']}/approve", "supervisor: approve",
                        json.dumps({"note": "aprobat"}).encode())


class WebReader(_Signed):
    """The web platform's screens, read by a national user."""

    fixed_count = 0
    scenario = WEB
    wait_time = between(0.5, 1.5)
    seen: list[str]

    def on_start(self) -> None:
        super().on_start()
        self.seen = []

    @task(3)
    def households(self) -> None:
        page = random.randint(1, 3)
        listed = self.signed("GET", f"/v1/web/households?county={RUN.plan.county}"
                             f"&page={page}&per_page=20", "web: household list")
        if listed:
            self.seen = [item["id"] for item in listed["items"]] or self.seen

    @task(2)
    def profile(self) -> None:
        if self.seen:
            self.signed("GET", f"/v1/web/households/{random.choice(self.seen)}",
                        "web: household profile")

    @task(1)
    def summaries(self) -> None:
        plan = RUN.plan
        level, code = random.choice([("locality", plan.locality), ("county", plan.county),
                                     ("national", "")])
        path = f"/v1/web/summary?level={level}" + (f"&code={code}" if code else "")
        self.signed("GET", path, f"web: {level} summary")


# --- the servers' side, sampled -------------------------------------------------------------

LAG = "vatra_projection_lag_seconds"


def _sample(environment: Environment, urls: list[str]) -> None:
    """Every second: the projection lag, the largest any of ``urls`` reports. Every
    instance may run a projector (each household is projected by one at a time); one
    that runs none reports 0. Behind a load balancer that hides ``/metrics`` (deploy/),
    name the instances or the projector with ``--vatra-metrics``."""
    import requests  # Locust's own dependency, gevent-friendly once patched

    while True:
        started = time.perf_counter()
        lag, error = 0.0, None
        for url in urls:
            try:
                answer = requests.get(url, timeout=5)
                if answer.status_code != 200:
                    raise RuntimeError(f"{url} answered {answer.status_code}: not a Vatra "
                                       f"/metrics (see --vatra-metrics)")
                for family in text_string_to_metric_families(answer.text):
                    for s in family.samples:
                        if s.name == LAG:
                            lag = max(lag, s.value)
            except Exception as exc:  # an instance down is a failure of the run
                error = exc
        _fire(environment, "server", "projection lag (sampled 1/s)", lag, exception=error)
        gevent.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))


@events.test_start.add_listener
def _start_sampler(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    first_worker = isinstance(runner, WorkerRunner) and runner.worker_index == 0
    options = environment.parsed_options
    chosen = str(options.vatra_metrics or "") if options is not None else ""
    urls = ([u.strip() for u in chosen.split(",") if u.strip()] if chosen else
            [t.http_url + "/metrics" for t in RUN.plan.targets])
    if chosen == "off":
        return
    if isinstance(runner, LocalRunner) or first_worker:
        sampler = gevent.spawn(_sample, environment, urls)
        environment.events.test_stopping.add_listener(lambda **_: sampler.kill(block=False))


@events.test_stop.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    refusals = ", ".join(f"{c} {n}" for c, n in sorted(RUN.refusals.items())) or "none"
    log.info("vatra: tablets sent %d bytes and received %d; refusals: %s",
             RUN.bytes_up, RUN.bytes_down, refusals)
