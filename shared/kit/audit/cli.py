"""``bt-audit verify`` and ``bt-audit purge`` (also ``python -m shared.kit.audit``).

The trail is ``--uri``, else ``BT_GATEWAY_AUDIT_URI``, else the services' default (sqlite:///var/audit/trail.sqlite,
relative to the working folder). ``verify`` exits 0 when the chain is intact and 1 naming the first edited, deleted
or reordered record; ``purge`` deletes the records older than the retention (the services do it hourly too).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

from shared.kit.audit.settings import DEFAULT_AUDIT_URI, DEFAULT_RETENTION_DAYS
from shared.kit.audit.store import check_uri, open_store
from shared.kit.audit.trail import cutoff
from shared.kit.audit.verify import Verified, verify

URI_ENV = "BT_GATEWAY_AUDIT_URI"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bt-audit", description="The audit trail of the classifications answered.")
    default = os.environ.get(URI_ENV, DEFAULT_AUDIT_URI)
    parser.add_argument("--uri", default=default, help=f"sqlite:///<path> or postgresql://...; default: ${URI_ENV}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="check the hash chain; name the first edited, deleted or reordered record")
    purge = commands.add_parser("purge", help="delete the records older than the retention")
    purge.add_argument("--retention-days", type=int, default=DEFAULT_RETENTION_DAYS)
    args = parser.parse_args(argv)
    try:
        uri = check_uri(args.uri)
    except ValueError as exc:
        parser.error(str(exc))
    store = open_store(uri)
    try:
        if args.command == "purge":
            deleted = store.purge(cutoff(timedelta(days=args.retention_days)))
            print(f"deleted {deleted} record(s) older than {args.retention_days} days")
            return 0
        result = verify(store)
    finally:
        store.close()
    if isinstance(result, Verified):
        print(f"OK: {result.records} record(s), positions {result.first_seq}..{result.last_seq}, chain intact")
        return 0
    print(f"BROKEN: {result.describe()}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
