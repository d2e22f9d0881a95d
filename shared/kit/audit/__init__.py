"""The audit trail: one append-only, hash-chained record per classification answered (docs/reliability.md).

- ``records``: what a record holds and how its hash is defined (sha256 over a canonical JSON).
- ``store``: the chain in PostgreSQL or in a SQLite file: append, purge expired records, read back.
- ``verify``: walk the chain and name the first edited, deleted or reordered record.
- ``trail``: the writer a service holds: a background thread, so no request waits on the database; counters.
- ``settings``: the ``audit_*`` fields a service's settings inherit.
- ``cli``: ``bt-audit verify`` and ``bt-audit purge``.
"""
