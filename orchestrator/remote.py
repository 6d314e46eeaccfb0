"""The commands that talk to a running daemon's control API (``api.listen`` and ``api.token``
from ``--config``): ``campaign``, ``status``, ``deliveries`` and ``dnc``. Exit status: 0 done;
1 refused by the daemon, or an id it had nothing to do for (the reason is on stderr); 2 usage
or config error; 4 the daemon is unreachable or its store unavailable.

Importing this module costs only the standard library (the CLI builds its parser from it for
every command, ``--help`` too): httpx and the config are imported when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from orchestrator import exceptions
from orchestrator.exceptions import CommandFailed

if TYPE_CHECKING:
    import httpx

COMMANDS = ("campaign", "status", "deliveries", "dnc")
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 4
CHUNK = 1 << 16
MEDIA = {".csv": "text/csv", ".jsonl": "application/x-ndjson", ".ndjson": "application/x-ndjson"}
#: Why the daemon skipped an id of a replay (its answer does not tell the two cases apart).
NOT_DEAD = "not replayed: no dead letter has this id (no delivery has it, or it is pending or done)"

IMPORT_EXAMPLE = """\
examples:
  orchestrator campaign import leads.csv --name spring --config orchestrator.yaml \\
    --from +16045551234 --from +16045551235 --window 09:00-20:00 --days mon,tue,wed,thu,fri \\
    --max-attempts 3 --budget 250 --price-per-minute 0.12 --map "metadata.first=First Name"
  orchestrator campaign import more.jsonl --into CAMPAIGN_ID --config orchestrator.yaml

CSV: a header row; to (or phone, number), from, agent_id, purpose, goal, template_id and
metadata.KEY columns are read; --map FIELD=COLUMN names another column. JSON lines: one object
per line, metadata may be a nested object. Refused rows are listed with their line."""


class DaemonApi:
    """An authenticated client of the daemon's control API."""

    def __init__(self, config_path: Path, *, read_timeout: float | None = 30.0) -> None:
        import httpx

        from orchestrator import config

        cfg = config.load(config_path)
        if cfg.api.token is None:
            raise exceptions.ConfigError(f"{config_path}: set api.token to use the control API")
        host, _, port = cfg.api.listen.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):  # noqa: S104 - listening everywhere: ask locally
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        self.base = f"http://{host}:{port}"
        self.http: httpx.Client = httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {cfg.api.token.get_secret_value()}"},
            timeout=httpx.Timeout(30.0, connect=5.0, read=read_timeout),
        )

    def __enter__(self) -> DaemonApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **options: Any) -> Any:
        """The JSON answer of a 2xx, else :class:`~orchestrator.exceptions.CommandFailed`."""
        import httpx

        try:
            response = self.http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise CommandFailed(
                EXIT_UNAVAILABLE, f"cannot reach the daemon at {self.base}: {type(exc).__name__}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code = error.get("code") or f"HTTP_{response.status_code}"
        message = error.get("message") or response.text[:200]
        status = EXIT_UNAVAILABLE if response.status_code >= 500 else EXIT_REFUSED
        raise CommandFailed(status, f"{code}: {message}")


# -- arguments ---------------------------------------------------------------------------------


def _window(text: str) -> dict[str, str]:
    start, sep, end = text.partition("-")
    if not sep or not start or not end:
        raise argparse.ArgumentTypeError(f"a window is HH:MM-HH:MM, not {text!r}")
    return {"start": start.strip(), "end": end.strip()}


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected FIELD=COLUMN, not {text!r}")
    return key.strip(), value


def add_commands(commands: Any) -> None:
    """Add ``campaign``, ``status``, ``deliveries`` and ``dnc`` to the CLI's subcommands."""
    daemon = argparse.ArgumentParser(add_help=False)
    daemon.add_argument(
        "--config",
        type=Path,
        required=True,
        help="the daemon's config file (for api.listen and api.token)",
    )
    daemon.add_argument("--json", action="store_true", help="print the API's JSON answer")

    campaign = commands.add_parser(
        "campaign",
        help="import, list, show, pause, resume or cancel campaigns",
        description="Campaigns on a running daemon.",
    )
    actions = campaign.add_subparsers(dest="action", required=True, metavar="ACTION")
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--settings", help="the settings as JSON (or @FILE); flags override it")
    flags.add_argument(
        "--from",
        dest="from_",
        action="append",
        default=[],
        metavar="NUMBER",
        help="a caller id of the pool (repeatable; default: defaults.from)",
    )
    flags.add_argument("--agent", help="agent id")
    flags.add_argument("--purpose", help="purpose of the calls (a row's purpose wins)")
    flags.add_argument("--goal", help="goal of the calls (a row's goal wins)")
    flags.add_argument("--template", help="call template id")
    flags.add_argument("--window", type=_window, help="calling window HH:MM-HH:MM, local time")
    flags.add_argument("--days", help="days of the window, e.g. mon,tue,wed,thu,fri")
    flags.add_argument("--time-zone", help="the window's zone (default: each number's own)")
    flags.add_argument("--max-attempts", type=int, help="attempts per call at most")
    flags.add_argument("--priority", type=int, help="-100 to 100 (higher is dialled first)")
    flags.add_argument("--share", type=float, help="weight among campaigns dialling at once")
    flags.add_argument("--budget", type=float, help="pause when this much is spent")
    flags.add_argument("--price-per-minute", type=float, help="for spend and the budget")
    flags.add_argument(
        "--expected-call-minutes",
        type=float,
        help="what a call is taken to last for the budget until the campaign's own calls tell",
    )
    imp = actions.add_parser(
        "import",
        parents=[daemon, flags],
        help="import a CSV or JSON-lines file as a new campaign (or into one)",
        description="Stream FILE (- for stdin) to the daemon: a new campaign named --name, or "
        "more rows for the campaign --into. Prints what was queued and the rows refused.",
        epilog=IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", help="the CSV or JSON-lines file, - for stdin")
    imp.add_argument(
        "--dry-run",
        action="store_true",
        help="read the file as an import would, store nothing: rows it would queue and "
        "refuse, time zones, when it would finish and what it would cost",
    )
    imp.add_argument(
        "--talk-seconds",
        type=float,
        help="with --dry-run: average talk (default: the campaign's expected_call_minutes)",
    )
    imp.add_argument(
        "--ring-seconds", type=float, help="with --dry-run: average ringing (default 20)"
    )
    target = imp.add_mutually_exclusive_group(required=True)
    target.add_argument("--name", help="the new campaign's name")
    target.add_argument("--into", metavar="CAMPAIGN_ID", help="add the rows to this campaign")
    imp.add_argument("--format", choices=["csv", "jsonl"], help="default: from the extension")
    imp.add_argument(
        "--map",
        action="append",
        type=_pair,
        default=[],
        metavar="FIELD=COLUMN",
        help="read FIELD (to, from, purpose, ..., metadata.KEY) from COLUMN (repeatable)",
    )
    sets = actions.add_parser(
        "set",
        parents=[daemon, flags],
        help="change a campaign's settings (a raised budget resumes it)",
        description="Change some of a campaign's settings; the others stay. Validated as at "
        "import. A campaign paused for its budget resumes when the new budget pays for a call.",
    )
    sets.add_argument("id", help="the campaign id")
    listing_campaigns = actions.add_parser("list", parents=[daemon], help="campaigns")
    listing_campaigns.add_argument(
        "--all", action="store_true", help="completed and canceled ones too"
    )
    for name, text in (
        ("show", "a campaign's settings and progress"),
        ("errors", "the rows its imports refused"),
        ("pause", "stop dialling it (live calls finish)"),
        ("resume", "dial it again"),
        (
            "cancel",
            "end it: queued and scheduled calls are canceled, live calls finish (--hangup: "
            "hung up at the provider)",
        ),
    ):
        sub = actions.add_parser(name, parents=[daemon], help=text, description=text)
        sub.add_argument("id", help="the campaign id")
        if name in ("pause", "cancel"):
            sub.add_argument("--reason", help="why (shown with the campaign)")
        if name == "show":
            _watch_flags(sub, "until the campaign is completed or canceled")
            sub.add_argument(
                "--estimate",
                action="store_true",
                help="when what remains would finish, and what it would cost",
            )
        if name == "cancel":
            sub.add_argument(
                "--hangup", action="store_true", help="hang its live calls up at the provider too"
            )
        if name == "errors":
            sub.add_argument(
                "--after", default="0:0", help="rows after this IMPORT:LINE (a page's next)"
            )
            sub.add_argument("--limit", type=int, default=100)

    status = commands.add_parser(
        "status",
        parents=[daemon],
        help="live calls, queue, dialing and provider state, campaigns, rates",
        description="A running daemon's view: the fleet's live calls, queue depth and dialing "
        "state, the provider, campaigns, and this daemon's counters and rates.",
    )
    status.add_argument("--all", action="store_true", help="completed and canceled campaigns too")
    _watch_flags(status, "until Ctrl-C")

    deliveries = commands.add_parser(
        "deliveries", help="list or replay handler deliveries (dead letters)"
    )
    dactions = deliveries.add_subparsers(dest="action", required=True, metavar="ACTION")
    dlist = dactions.add_parser("list", parents=[daemon], help="deliveries by state and handler")
    dlist.add_argument(
        "--state", choices=["pending", "done", "dead"], default="dead", help="default: dead"
    )
    dlist.add_argument(
        "--route", "--handler", dest="route", help="only this route's (the rule's name)"
    )
    dlist.add_argument("--limit", type=int, default=100, help="at most this many (1 to 1000)")
    replay = dactions.add_parser(
        "replay", parents=[daemon], help="deliver dead letters again (tries start over)"
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="delivery ids")
    replay.add_argument("--all-dead", action="store_true", help="every dead letter")
    replay.add_argument(
        "--route", "--handler", dest="route", help="with --all-dead: only this route's"
    )

    dnc = commands.add_parser("dnc", help="the do-not-call list of the API")
    nactions = dnc.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = nactions.add_parser("add", parents=[daemon], help="never call NUMBER again")
    add.add_argument("number", help="E.164, e.g. +14155551234")
    add.add_argument("--reason", help="why")
    remove = nactions.add_parser("remove", parents=[daemon], help="take NUMBER off the list")
    remove.add_argument("number", help="E.164, e.g. +14155551234")
    listing = nactions.add_parser("list", parents=[daemon], help="the numbers on the list")
    listing.add_argument("--after", default="", help="numbers after this one (a page's next)")
    listing.add_argument("--limit", type=int, default=100)


def _watch_flags(parser: argparse.ArgumentParser, until: str) -> None:
    parser.add_argument(
        "--watch",
        action="store_true",
        help=f"keep showing it, {until} (redrawn on a terminal, a line per change otherwise)",
    )
    parser.add_argument(
        "--every",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help="with --watch: how often (0.5 at least; default 1)",
    )


def _interval(text: str) -> float:
    """``--every``: seconds, at least half a second (a watch must not hammer the daemon)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0.5:
        raise argparse.ArgumentTypeError(f"at least 0.5 seconds, not {text}")
    return value


# -- running -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; the exit status."""
    try:
        if args.command == "campaign" and args.action == "import":
            return _import(args)
        with DaemonApi(args.config) as api:
            if args.command == "campaign":
                return _campaign(api, args)
            if args.command == "status":
                return _status(api, args)
            if args.command == "deliveries":
                return _deliveries(api, args)
            return _dnc(api, args)
    except CommandFailed as exc:
        print(f"orchestrator: {exc.message}", file=sys.stderr)
        return exc.status


def _print(args: argparse.Namespace, answer: Any, text: Any) -> int:
    print(json.dumps(answer, indent=2) if args.json else text(answer))
    return EXIT_OK


def _status(api: DaemonApi, args: argparse.Namespace) -> int:
    params = {"campaigns": "all"} if args.all else None

    def fetch() -> dict[str, Any]:
        return dict(api.request("GET", "/v1/status", params=params))

    if args.watch:
        from orchestrator import watch

        return watch.watch(
            fetch,
            text=_status_text,
            line=watch.as_json if args.json else watch.status_line,
            every=args.every,
            plain=args.json,
        )
    return _print(args, fetch(), _status_text)


def _campaign(api: DaemonApi, args: argparse.Namespace) -> int:
    if args.action == "list":
        params = None if args.all else {"open": "true"}
        return _print(args, api.request("GET", "/v1/campaigns", params=params), _campaigns_text)
    path = f"/v1/campaigns/{args.id}"
    if args.action == "show":
        if args.watch:
            from orchestrator import watch

            return watch.watch(
                lambda: dict(api.request("GET", path)),
                text=_campaign_text,
                line=watch.as_json if args.json else watch.campaign_line,
                done=lambda c: c["status"] in watch.FINAL_CAMPAIGN,
                every=args.every,
                plain=args.json,
            )
        params = {"estimate": "true"} if args.estimate else None
        return _print(args, api.request("GET", path, params=params), _campaign_text)
    if args.action == "set":
        changes = settings_from(args)
        if not changes:
            raise CommandFailed(EXIT_USAGE, "give the settings to change (--budget N, ...)")
        answer = api.request("PATCH", path, json=changes)
        return _print(args, answer, _set_text)
    if args.action == "errors":
        params = {"after": args.after, "limit": args.limit}
        return _print(args, api.request("GET", path + "/errors", params=params), _errors_text)
    body: dict[str, Any] = {"reason": args.reason} if getattr(args, "reason", None) else {}
    if getattr(args, "hangup", False):
        body["hangup"] = True
    answer = api.request("POST", f"{path}/{args.action}", json=body or None)
    return _print(args, answer, lambda c: f"campaign {c['id']} ({c['name']}): {c['status']}")


def _deliveries(api: DaemonApi, args: argparse.Namespace) -> int:
    if args.action == "list":
        params: dict[str, Any] = {"state": args.state, "limit": args.limit}
        if args.route:
            params["route"] = args.route
        width = _terminal_width()
        answer = api.request("GET", "/v1/deliveries", params=params)
        return _print(args, answer, lambda a: deliveries_text(a, width=width))
    if bool(args.ids) == args.all_dead:
        raise CommandFailed(EXIT_USAGE, "give delivery ids or --all-dead")
    if args.route and not args.all_dead:
        raise CommandFailed(EXIT_USAGE, "--route goes with --all-dead")
    body: dict[str, Any] = {"ids": args.ids} if args.ids else {"all_dead": True}
    if args.route:
        body["route"] = args.route
    answer = api.request("POST", "/v1/deliveries/replay", json=body)
    _print(args, answer, _replay_text)
    # An id the daemon skipped was not replayed: say so for each, and fail as a refusal does
    # (a script that replays a list of ids must not take a typo for a success).
    skipped = answer.get("skipped") or []
    for delivery_id in skipped:
        print(f"orchestrator: {delivery_id}: {NOT_DEAD}", file=sys.stderr)
    return EXIT_REFUSED if skipped else EXIT_OK


def _replay_text(answer: dict[str, Any]) -> str:
    count = answer["replayed"]
    lines = [f"replayed {count} deliver{'y' if count == 1 else 'ies'}"]
    if answer.get("more"):
        lines.append("more dead letters remain: run it again")
    return "\n".join(lines)


def _terminal_width() -> int | None:
    """The terminal's width when stdout is one (text is wrapped to fit), else None (a pipe or a
    file gets each row on one line, whatever its length)."""
    if not sys.stdout.isatty():
        return None
    import shutil

    return shutil.get_terminal_size().columns


def _dnc_text(answer: dict[str, Any]) -> str:
    lines = [f"{n['number']}  {n['added_at']}  {n['reason'] or ''}" for n in answer["numbers"]]
    if answer["next"] is not None:
        lines.append(f"... more (--after {answer['next']})")
    return "\n".join(lines) if lines else "the list is empty"


def _dnc(api: DaemonApi, args: argparse.Namespace) -> int:
    if args.action == "list":
        params = {"after": args.after, "limit": args.limit}
        return _print(args, api.request("GET", "/v1/do-not-call", params=params), _dnc_text)
    if args.action == "add":
        body = {"number": args.number, "reason": args.reason}
        answer = api.request("POST", "/v1/do-not-call", json=body)
        return _print(
            args,
            answer,
            lambda a: f"{a['number']}: {'added' if a['added'] else 'already'} on the list",
        )
    answer = api.request("DELETE", f"/v1/do-not-call/{args.number}")
    return _print(args, answer, lambda a: f"{a['number']}: removed from the list")


# -- import ------------------------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The campaign settings: ``--settings`` JSON, overridden by the flags given."""
    settings: dict[str, Any] = {}
    if args.settings:
        text = args.settings
        if text.startswith("@"):
            try:
                text = Path(text[1:]).read_text()
            except OSError as exc:
                raise CommandFailed(EXIT_USAGE, f"cannot read {text[1:]}: {exc.strerror}") from None
        try:
            settings = json.loads(text)
        except ValueError as exc:
            raise CommandFailed(EXIT_USAGE, f"--settings is not JSON: {exc}") from None
        if not isinstance(settings, dict):
            raise CommandFailed(EXIT_USAGE, "--settings must be a JSON object")
    flags = {
        "from_numbers": args.from_ or None,
        "agent_id": args.agent,
        "purpose": args.purpose,
        "goal": args.goal,
        "template_id": args.template,
        "max_attempts": args.max_attempts,
        "priority": args.priority,
        "share": args.share,
        "budget": args.budget,
        "price_per_minute": args.price_per_minute,
        "expected_call_minutes": args.expected_call_minutes,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.window or args.days or args.time_zone:
        window = dict(settings.get("window") or {})
        window.update(args.window or {})
        if args.days:
            window["days"] = [d.strip() for d in args.days.split(",") if d.strip()]
        if args.time_zone:
            window["time_zone"] = args.time_zone
        settings["window"] = window
    return settings


def _source(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    try:
        return Path(name).open("rb")
    except OSError as exc:
        raise CommandFailed(EXIT_USAGE, f"cannot read {name}: {exc.strerror}") from None


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk


def _import(args: argparse.Namespace) -> int:
    fmt = args.format or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
        Path(args.file).suffix.lower()
    )
    if fmt is None:
        raise CommandFailed(EXIT_USAGE, f"cannot tell the format of {args.file}: pass --format")
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    params = [(f"map.{field}", column) for field, column in args.map]
    headers = {"Content-Type": media}
    if args.into:
        path = f"/v1/campaigns/{args.into}/rows"
        flags = [args.settings, args.window, args.days, args.time_zone, *_flag_values(args)]
        if any(v is not None for v in flags):
            raise CommandFailed(EXIT_USAGE, "settings go with --name (a new campaign), not --into")
    else:
        path = "/v1/campaigns"
        params.append(("name", args.name))
        headers["X-Campaign-Settings"] = json.dumps(settings_from(args))
    if args.dry_run:
        params.append(("dry_run", "true"))
        for name in ("talk_seconds", "ring_seconds"):
            if getattr(args, name) is not None:
                params.append((name, str(getattr(args, name))))
    source = _source(args.file)
    try:
        # The daemon answers when the last row is in: no read timeout.
        with DaemonApi(args.config, read_timeout=None) as api:
            answer = api.request(
                "POST", path, params=params, headers=headers, content=_chunks(source)
            )
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    return _print(args, answer, _dry_run_text if args.dry_run else _import_text)


def _flag_values(args: argparse.Namespace) -> Sequence[Any]:
    return [
        args.from_ or None,
        args.agent,
        args.purpose,
        args.goal,
        args.template,
        args.max_attempts,
        args.priority,
        args.share,
        args.budget,
        args.price_per_minute,
        args.expected_call_minutes,
    ]


# -- text --------------------------------------------------------------------------------------


#: The narrowest the last column of a table is wrapped to: when the columns before it leave
#: less room on the terminal, it goes under each row instead, indented by :data:`UNDER`.
MIN_WRAP = 30
UNDER = "    "


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, width: int | None = None
) -> str:
    """Columns padded to their widest cell (``-`` for None); the last column is never cut.

    A line break in a last cell goes on a continuation line under the column. With ``width``
    (a terminal's), the last cells are also wrapped at spaces to fit it, a word longer than the
    room (a URL, say) kept whole; if the other columns leave less than :data:`MIN_WRAP`, each
    row's last cell goes on the lines under the row instead, indented by :data:`UNDER`.
    """
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers[:-1])]
    indent = " " * (sum(widths) + 2 * len(widths))
    under = width is not None and width - len(indent) < MIN_WRAP
    if under:
        indent = UNDER
    room = None if width is None else max(width - len(indent), MIN_WRAP)
    lines = []
    for number, row in enumerate([list(headers), *cells]):
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        last = [row[-1]] if number == 0 else _wrap(row[-1], room)
        if under and number > 0:
            lines.append("  ".join(padded).rstrip())
            lines += [(indent + text).rstrip() for text in last if text]
        else:
            lines.append("  ".join([*padded, last[0]]).rstrip())
            lines += [(indent + text).rstrip() for text in last[1:]]
    return "\n".join(lines)


def _wrap(text: str, room: int | None) -> list[str]:
    """``text``'s lines, each wrapped at spaces to ``room`` columns (None: not wrapped)."""
    import textwrap

    out: list[str] = []
    for paragraph in text.splitlines() or [""]:
        if room is None or len(paragraph) <= room:
            out.append(paragraph)
        else:
            out += textwrap.wrap(paragraph, room, break_long_words=False, break_on_hyphens=False)
    return out


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _import_text(answer: dict[str, Any]) -> str:
    campaign, done = answer["campaign"], answer["import"]
    lines = [
        f"campaign {campaign['id']} ({campaign['name']}): {done['queued']} row(s) queued, "
        f"{done['invalid']} refused"
    ]
    lines += [f"  line {e['line']}: {e['reason']}" for e in done["errors"]]
    if done["more_errors"]:
        lines.append(
            f"  ... {done['invalid'] - len(done['errors'])} more: "
            f"orchestrator campaign errors {campaign['id']}"
        )
    if done["ignored_columns"]:
        lines.append(f"ignored columns: {', '.join(done['ignored_columns'])}")
    return "\n".join(lines)


def _dry_run_text(answer: dict[str, Any]) -> str:
    done, found = answer["import"], answer["estimate"]
    lines = [
        f"dry run: {done['queued']} row(s) would be queued, {done['invalid']} refused "
        "(nothing was stored)"
    ]
    lines += [f"  line {e['line']}: {e['reason']}" for e in done["errors"]]
    if done["more_errors"]:
        lines.append(f"  ... {done['invalid'] - len(done['errors'])} more")
    zones = ", ".join(f"{zone} {n}" for zone, n in answer["time_zones"].items())
    if zones:
        lines.append(f"time zones: {zones}")
    pace = f"{found['calls_per_second'] * 60:.3g} calls/min, set by {found['bound_by']}"
    if found["seconds"] is None:
        lines.append(f"finish: not within 60 days ({pace})")
    else:
        hours = found["seconds"] / 3600
        when = f"{hours:.1f} h" if hours >= 1 else f"{found['seconds'] / 60:.1f} min"
        lines.append(f"finish: in about {when}, {found['finishes_at']} ({pace})")
    lines.append(
        f"cost: about {found['cost']:.2f} at {found['talk_seconds']:g} s of talk a call and "
        f"{found['price_per_minute']:g} a minute (first attempts only)"
    )
    return "\n".join(lines)


def _campaigns_text(answer: dict[str, Any]) -> str:
    rows = [
        (
            c["id"],
            c["name"],
            c["status"],
            c["rows"]["total"],
            c["rows"]["invalid"],
            c["dialed"],
            _money(c["spent"]),
            _money(c["budget"]),
        )
        for c in answer["campaigns"]
    ]
    if not rows:
        return "no campaigns"
    return table(("ID", "NAME", "STATUS", "ROWS", "INVALID", "DIALED", "SPENT", "BUDGET"), rows)


def _budget_text(budget: dict[str, dict[str, float]]) -> str:
    """The request budget left: ``placements 5 this minute, 58 this hour; lookups ...``."""
    if not budget:
        return "no limit"
    return "; ".join(
        f"{kind} " + ", ".join(f"{left:g} this {window}" for window, left in windows.items())
        for kind, windows in budget.items()
    )


def _set_text(c: dict[str, Any]) -> str:
    text = f"campaign {c['id']} ({c['name']}): {c['status']}"
    if c["reason"]:
        text += f" ({c['reason']})"
    if c["budget"] is not None:
        text += f", spent {_money(c['spent'])} of {_money(c['budget'])}"
    return text


def _campaign_text(c: dict[str, Any]) -> str:
    progress = c.get("progress") or {}
    by_state = progress.get("by_state") or progress.get("by_status") or {}
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(by_state.items()))
    spent = _money(c["spent"])
    if c["budget"] is not None:
        spent += f" of {_money(c['budget'])} ({_money(c['budget_left'])} left)"
    status = c["status"] + (f" ({c['reason']})" if c["reason"] else "")
    settings = {k: v for k, v in c["settings"].items() if v not in (None, [], {})}
    rows = [
        ("campaign", f"{c['id']} ({c['name']})"),
        ("status", status),
        ("rows", f"{c['rows']['total']} ({c['rows']['invalid']} refused)"),
        ("calls", f"{progress.get('calls', 0)}" + (f": {by_status}" if by_status else "")),
        ("attempts", f"{progress.get('attempts', 0)} made"),
        ("dialed", c["dialed"]),
        ("spent", spent),
        ("settings", json.dumps(settings, separators=(", ", ": "))),
        ("created", c["created_at"]),
    ]
    found = c.get("estimate")
    if found:
        finish = found["finishes_at"] or "not within 60 days"
        rows.append(("remaining", f"{found['calls']} call(s), finishing {finish}, "
                     f"about {found['cost']:.2f} more (set by {found['bound_by']})"))  # fmt: skip
    return "\n".join(f"{k:<10}{v}" for k, v in rows)


def _errors_text(answer: dict[str, Any]) -> str:
    lines = [f"import {e['import']} line {e['line']}: {e['reason']}" for e in answer["errors"]]
    if answer["next"] is not None:
        lines.append(f"... more (--after {answer['next']})")
    return "\n".join(lines) if lines else "no refused rows"


def deliveries_text(answer: dict[str, Any], *, width: int | None = None) -> str:
    """``deliveries list`` as a table whose LAST ERROR is printed whole (an error's end often
    names what failed), wrapped to ``width`` when given."""
    rows = [
        (d["id"], d["route"], d["state"], d["tries"], d["call_id"], d["last_error"] or None)
        for d in answer["deliveries"]
    ]
    if not rows:
        return "no deliveries"
    return table(("ID", "ROUTE", "STATE", "TRIES", "CALL", "LAST ERROR"), rows, width=width)


def _status_text(s: dict[str, Any]) -> str:
    dialing = s["dialing"]
    if dialing["paused"]:
        state = f"paused ({dialing['reason']}) until {dialing['until']}"
    else:
        state = "running"
    if dialing["factor"] < 1:
        state += f", pace slowed to {dialing['factor']:.0%}"
    rates = s["rates"]["per_minute"]
    window = s["rates"]["window_seconds"]
    totals = s["totals"]
    placed = totals["placements"].get("placed", 0)
    errors = {k: v for k, v in totals["placements"].items() if k != "placed"}
    from orchestrator.watch import held_text

    held = held_text(s.get("queue") or {})
    lines = [
        ("ready", "yes" if s["ready"] else "no"),
        ("provider", s["provider"]),
        ("store", s["store"]),
        ("dialing", state),
        ("live calls", s["live"]),
        ("queued", f"{s['queued']}" + (f" ({held})" if held else "")),
        (
            "rates",
            f"{rates['placed']:g} placed/min, {rates['placement_errors']:g} refused/min, "
            f"{rates['webhooks']:g} webhooks/min, {rates['events']:g} events/min "
            f"(last {window:g} s)",
        ),
        (
            "placements",
            f"{placed:g} placed"
            + "".join(f", {v:g} {k}" for k, v in sorted(errors.items()))
            + " (this daemon)",
        ),
        ("dead letters", f"{s.get('dead_letters', 0)} now (the fleet's)"),
        ("budget left", _budget_text(s.get("request_budget") or {})),
    ]
    text = "\n".join(f"{k:<14}{v}" for k, v in lines)
    campaigns = [
        (
            c["id"],
            c["name"],
            c["status"],
            c["rows"]["total"],
            c["dialed"],
            _money(c["spent"]),
            _money(c["budget"]),
        )
        for c in s["campaigns"]
    ]
    if campaigns:
        headers = ("CAMPAIGN", "NAME", "STATUS", "ROWS", "DIALED", "SPENT", "BUDGET")
        text += "\n\n" + table(headers, campaigns)
    return text
