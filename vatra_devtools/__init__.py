"""Tools for developers, outside the server's runtime: the demo, the benchmarks, seeded
caseloads and provisioning of simulated tablets (they enroll as real tablets do).
"""
