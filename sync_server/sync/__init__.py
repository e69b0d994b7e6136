"""The merge pipeline, one module per stage: resident households, the pipeline (fork ->
check -> persist -> swap -> fan out), checks, touched paths and change decoding,
conflicts, and the server's follow-up changes.
"""
