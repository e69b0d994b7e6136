"""One peer from socket to pipeline: the WebSocket endpoint, the connection with its
bounded outbox, the per-peer dispatch loop and its rate limit, revocation.
"""
