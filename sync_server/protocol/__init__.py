"""The wire contract shared with the client: message codec, end-to-end session, error codes,
frame channel, request signing, and the bounds of a sync message. Imports nothing else of
the server; ``client_sdk`` may import this package and nothing else of ``sync_server``.
"""
