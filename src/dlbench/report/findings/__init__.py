"""Findings: the course's claims, each checked against this run's tables (``findings.parquet``).

``base`` holds the registry, the verdict type, the table builder and the HTML helpers; each other
module of this package registers the claims of one course topic (``ssl``: the SSL section's).
``base.load_all`` imports every module here, so a new topic's claims are one new module.
"""
