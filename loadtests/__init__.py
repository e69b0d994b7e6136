"""Vatra's load tests: Locust users that speak the real protocol.

``python -m loadtests.provision`` makes the users, enrolled devices and caseloads of a
test (a plan directory); ``locust -f loadtests/locustfile.py --vatra-plan DIR`` runs the
scenarios against the servers the plan names. See docs/capacity.md.
"""
