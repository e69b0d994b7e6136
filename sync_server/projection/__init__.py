"""The web tier's read model: the pure projection of a household into rows, the projector
that keeps ``proj`` up to date, and the scoped queries the read API serves.
"""
