"""The `megu` commands for running as a service: the request queue, promotion and model listing."""

from __future__ import annotations

import argparse
from typing import Any

from megu_core.forget import SYNTAX
from megu_core.metrics import format_metrics_table
from megu_core.request_queue import STATUSES, QueuedRequest, RequestQueue
from megu_core.verdict import Check


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    """Add `request`, `promote`, `rollback` and `models` to the `megu` subcommands."""
    _add_request_commands(commands)

    promote = commands.add_parser(
        "promote", help="point an alias at a model version whose verdict passed"
    )
    promote.add_argument("version", type=int, help="registered model version to promote")
    promote.add_argument(
        "--alias", default="production", help="alias to move (default: production)"
    )
    promote.add_argument("--model", help="registered model name (default: the only megu model)")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the verdict did not pass (recorded)"
    )
    promote.add_argument("--reason", help="why, recorded with the promotion; expected with --force")
    promote.set_defaults(handler=run_promote)

    rollback = commands.add_parser(
        "rollback", help="move an alias back to the version that held it before"
    )
    rollback.add_argument(
        "--alias", default="production", help="alias to move (default: production)"
    )
    rollback.add_argument("--model", help="registered model name (default: the only megu model)")
    rollback.set_defaults(handler=run_rollback)

    models = commands.add_parser(
        "models", help="list registered model versions with aliases, requests and verdicts"
    )
    models.add_argument("--model", help="only this registered model (default: every megu model)")
    models.set_defaults(handler=run_models)


def _add_request_commands(commands: argparse._SubParsersAction) -> None:
    request = commands.add_parser(
        "request", help="queue forget requests and read their audit records"
    )
    actions = request.add_subparsers(dest="request_command", required=True)

    add = actions.add_parser("add", help="queue a forget request for the processing flow")
    add.add_argument("--forget", required=True, help=SYNTAX)
    add.add_argument("--note", help="free text kept in the audit record, e.g. a ticket number")
    add.add_argument("--dataset", help="dataset to unlearn from (default: the flow's dataset)")
    add.add_argument("--method", help="unlearning method (default: the flow's method)")
    add.set_defaults(handler=run_request_add)

    listing = actions.add_parser("list", help="list queued requests, oldest first")
    listing.add_argument("--status", choices=STATUSES, help="only requests with this status")
    listing.set_defaults(handler=run_request_list)

    show = actions.add_parser("show", help="print one request's full audit record")
    show.add_argument("request_id", help="id printed by 'megu request add'")
    show.set_defaults(handler=run_request_show)

    retry = actions.add_parser("retry", help="move a failed request back to pending")
    retry.add_argument("request_id")
    retry.add_argument(
        "--force",
        action="store_true",
        help="also requeue a running request; only when the worker that claimed it died",
    )
    retry.set_defaults(handler=run_request_retry)


def run_request_add(args: argparse.Namespace) -> int:
    record = RequestQueue().add(args.forget, args.note, args.dataset, args.method)
    print(f"queued forget request {record.request_id}: {record.forget}")
    return 0


def run_request_list(args: argparse.Namespace) -> int:
    records = RequestQueue().list_requests(args.status)
    if not records:
        print("no forget requests" + (f" with status {args.status}" if args.status else ""))
        return 0
    print(format_table([_list_row(record) for record in records]))
    return 0


def run_request_show(args: argparse.Namespace) -> int:
    print(format_audit_record(RequestQueue().get(args.request_id)))
    return 0


def run_request_retry(args: argparse.Namespace) -> int:
    record = RequestQueue().requeue(args.request_id, force=args.force)
    print(f"forget request {record.request_id} is pending again")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from megu_core.promotion import promote

    move = promote(args.version, args.alias, args.model, args.force, args.reason)
    forced = f" (forced: verdict {move.verdict or 'none'})" if move.forced else ""
    print(
        f"{move.registered_model}: alias {move.alias} -> version {move.version}, "
        f"was {move.previous_version or 'unset'}{forced}"
    )
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from megu_core.promotion import rollback

    move = rollback(args.alias, args.model)
    print(
        f"{move.registered_model}: alias {move.alias} rolled back to version {move.version}, "
        f"was {move.previous_version}"
    )
    return 0


def run_models(args: argparse.Namespace) -> int:
    from megu_core.promotion import list_versions

    versions = list_versions(args.model)
    if not versions:
        print("no registered megu models")
        return 0
    rows = [
        {
            "model": v.registered_model,
            "version": v.version,
            "aliases": ",".join(v.aliases),
            "role": v.role,
            "method": v.method,
            "forget": v.forget_request,
            "request": v.queue_request_id,
            "verdict": v.verdict,
            "from": v.source_version,
            "created": v.created_at,
        }
        for v in versions
    ]
    print(format_table(rows))
    return 0


def format_table(rows: list[dict[str, Any]]) -> str:
    """Format rows of equal keys as left-aligned text columns, `-` for missing values."""
    names = list(rows[0])
    cells = [[_cell(row[name]) for name in names] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]
    lines = ["  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_audit_record(record: QueuedRequest) -> str:
    """Format every field of a request's record, its metrics table and its verdict checks."""
    fields = {
        key: value
        for key, value in record.to_row().items()
        if key not in ("metrics", "verdict_checks")
    }
    width = max(len(key) for key in fields)
    lines = [f"{key.ljust(width)}  {_cell(value)}" for key, value in fields.items()]
    if record.metrics:
        lines += ["", format_metrics_table(record.metrics)]
    if record.verdict_checks:
        lines.append("")
        lines += [Check(**check).describe() for check in record.verdict_checks]
    return "\n".join(lines)


def _list_row(record: QueuedRequest) -> dict[str, Any]:
    return {
        "id": record.request_id,
        "status": record.status,
        "submitted": record.submitted_at[:19].replace("T", " "),
        "forget": record.forget,
        "dataset": record.dataset,
        "method": record.method,
        "verdict": record.verdict,
        "version": record.unlearned_version,
        "note": record.note,
    }


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)
