"""Who is who and who may do what: identity and enrollment, access rules, and the grants
of one connection.
"""
