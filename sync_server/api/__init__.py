"""The HTTP faces: the supervisors' approvals, the web tier's read API, enrollment,
operations endpoints, and one OpenAPI document. Each gets its dependencies through a
``routes(...)`` function; none imports ``sync_server.app``.
"""
