"""`fhir-server serve|token|audit|demo|import|export` — the command line of docs/configuration.md."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from fhir_server.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

    from fhir_server.storage.embedded import EmbeddedDatabase

PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _coding(text: str, default_system: str) -> dict[str, str]:
    system, separator, code = text.rpartition("|")
    return {"system": system if separator else default_system, "code": code}


class _Stopped(Exception):
    """SIGINT or SIGTERM reached `serve` outside uvicorn's own handling (which re-raises it at its end)."""


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into `_Stopped`, so that `finally` blocks (stopping the embedded
    database, removing its URI file) run on a signal as on a normal return; later signals are ignored
    while those blocks run."""
    received: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            raise _Stopped

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def worker_app() -> FastAPI:
    """The app factory of `serve --workers N`: each worker process builds its app from FHIR_* variables
    (`serve` sets FHIR_BASE_URL for them when it is unset)."""
    from fhir_server.app import create_app

    return create_app(Settings())


def _run_uvicorn(
    settings: Settings, args: argparse.Namespace, embedded: EmbeddedDatabase | None = None
) -> None:
    """Serve until stopped; `embedded`, the started embedded database, is the app's to supervise."""
    import uvicorn

    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "info",
        # X-Forwarded-For is believed only from FHIR_TRUSTED_PROXIES, by the API (api/peer.py).
        "proxy_headers": False,
        "timeout_graceful_shutdown": args.shutdown_timeout,
        # Bounded connections (api/connections.py): an idle keep-alive connection is closed after 5 s;
        # a request head must arrive within 10 s, its body at 1 KiB per 10 s at least (slowloris).
        "timeout_keep_alive": 5,
        "http": "fhir_server.api.connections:DeadlineProtocol",
    }
    if args.workers > 1:
        os.environ.setdefault("FHIR_BASE_URL", settings.resolved_base_url(args.host, args.port))
        uvicorn.run("fhir_server.cli:worker_app", factory=True, workers=args.workers, **options)
        return
    from fhir_server.app import create_app

    uvicorn.run(create_app(settings, host=args.host, port=args.port, embedded=embedded), **options)


def serve(args: argparse.Namespace) -> int:
    from fhir_server.storage.embedded import DataDirectoryInUse, EmbeddedDatabase

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    with _stopped_by_signals():
        try:
            if settings.mongodb_uri is not None:
                _run_uvicorn(settings, args)
                return 0
            if args.workers > 1:
                print(
                    "fhir-server: --workers needs FHIR_MONGODB_URI: the embedded database serves one "
                    "process only (docs/scaling.md)",
                    file=sys.stderr,
                )
                return 2
            if importlib.util.find_spec("secantus") is None:
                print(
                    "fhir-server: no FHIR_MONGODB_URI and the embedded database is not installed: "
                    "set FHIR_MONGODB_URI, or pip install 'fhir-server[embedded]'",
                    file=sys.stderr,
                )
                return 2
            database = EmbeddedDatabase(settings.data_dir.resolve() / "embedded-db")
            try:
                database.start()
            except DataDirectoryInUse as busy:
                print(f"fhir-server: {busy}", file=sys.stderr)
                return 1
            try:
                logging.getLogger("fhir_server").info("embedded database listening on %s", database.uri)
                _run_uvicorn(settings, args, database)
            finally:
                database.stop()
        except _Stopped:
            pass
    return 0


def token(args: argparse.Namespace) -> int:
    from fhir_server.auth.devkeys import mint_token

    settings = Settings()
    if settings.auth_jwks is not None:
        message = (
            "fhir-server token signs with the development key; the server trusts FHIR_AUTH_JWKS instead."
        )
        print(message, file=sys.stderr)
        return 2
    iua: dict[str, Any] = {}
    if args.name:
        iua["subject_name"] = args.name
    if args.role:
        iua["subject_role"] = [_coding(role, PROFESSION_SYSTEM) for role in args.role]
    if args.purpose:
        iua["purpose_of_use"] = [_coding(purpose, PURPOSE_SYSTEM) for purpose in args.purpose]
    if args.organization:
        iua["subject_organization"] = args.organization
    if args.organization_id:
        iua["subject_organization_id"] = args.organization_id
    if args.npi:
        iua["national_provider_identifier"] = args.npi
    if args.person_id:
        iua["person_id"] = args.person_id
    audience = args.audience or settings.auth_audience or settings.resolved_base_url("127.0.0.1", args.port)
    print(f"audience: {audience}", file=sys.stderr)
    print(
        mint_token(
            settings.data_dir,
            audience=audience,
            subject=args.sub,
            scopes=args.scope or ["user/*.cruds"],
            client_id=args.client_id,
            issuer=settings.auth_issuer,
            fhir_user=args.fhir_user,
            patient=args.patient,
            iua=iua or None,
            lifetime_seconds=args.lifetime,
        )
    )
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    from fhir_server.audit.verify import run_verify
    from fhir_server.storage.embedded import DataDirectoryInUse, EmbeddedDatabase

    settings = Settings()
    uri = args.uri or settings.mongodb_uri
    if uri is not None:
        return run_verify(uri, settings.database)
    database = EmbeddedDatabase(settings.data_dir.resolve() / "embedded-db")
    try:
        database.start()
    except DataDirectoryInUse as busy:
        if busy.uri is None:
            print(f"fhir-server: {busy}", file=sys.stderr)
            return 1
        print(f"using the database of the running server (pid {busy.pid}): {busy.uri}", file=sys.stderr)
        return run_verify(busy.uri, settings.database)
    try:
        return run_verify(database.uri, settings.database)
    finally:
        database.stop()


def _client_base_url(args: argparse.Namespace) -> str:
    """--base-url, else the served base URL: FHIR_BASE_URL, else http://127.0.0.1:8080/fhir."""
    return str(args.base_url or Settings().resolved_base_url("127.0.0.1", 8080)).rstrip("/")


def _dev_key_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else Settings().data_dir


def demo(args: argparse.Namespace) -> int:
    from fhir_server.demo import local_server, run_demo

    if args.base_url:
        return run_demo(args.base_url, _dev_key_dir(args), out=sys.stdout, audience=args.audience)
    print("Starting fhir-server on the embedded database in a temporary directory...", file=sys.stderr)
    with local_server() as server:
        return run_demo(server.base_url, server.data_dir, out=sys.stdout)


def import_files(args: argparse.Namespace) -> int:
    from fhir_server.auth.devkeys import mint_token
    from fhir_server.importer import run_import

    base_url = _client_base_url(args)
    token_value = args.token or mint_token(
        _dev_key_dir(args),
        audience=args.audience or base_url,
        subject="fhir-server-import",
        scopes=["system/*.cruds"],
        client_id="fhir-server-import",
    )
    paths = [Path(name) for name in args.files]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        print(f"no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = run_import(
        paths, base_url=base_url, token=token_value, progress=sys.stderr, batch_size=args.batch_size
    )
    print(summary.render())
    return 0 if summary.ok else 1


def export_files(args: argparse.Namespace) -> int:
    import httpx

    from fhir_server.auth.devkeys import mint_token
    from fhir_server.exporter import ExportFailed, ExportRequest, run_export

    base_url = _client_base_url(args)
    token_value = args.token or mint_token(
        _dev_key_dir(args),
        audience=args.audience or base_url,
        subject=args.client_id,
        scopes=["system/*.rs"],
        client_id=args.client_id,
    )
    request = ExportRequest(
        args.level,
        group=args.group,
        types=args.type or (),
        since=args.since,
        type_filters=args.type_filter or (),
    )
    try:
        with httpx.Client(timeout=args.timeout) as client:
            manifest = run_export(
                client, base_url, request, token=token_value, output=Path(args.output), progress=sys.stderr
            )
    except (ExportFailed, ValueError, httpx.HTTPError) as error:
        print(error, file=sys.stderr)
        return 1
    for item in manifest["output"]:
        print(f"{Path(args.output) / str(item['url']).rsplit('/', 1)[-1]}\t{item['type']}\t{item['count']}")
    print(f"transactionTime {manifest['transactionTime']} (the --since of the next export)", file=sys.stderr)
    return 0


BASE_URL_HELP = "the server's FHIR base URL (default: FHIR_BASE_URL, else http://127.0.0.1:8080/fhir)"
SERVE_DESCRIPTION = """\
Start the FHIR server: the API under /fhir, liveness at /health.

Configured by FHIR_* environment variables (docs/configuration.md). Without
FHIR_MONGODB_URI it runs the embedded database, its files in FHIR_DATA_DIR
(default ./.fhir-data), which one server owns at a time; while it runs,
FHIR_DATA_DIR/embedded-db/mongodb.uri holds that database's URI, which
`fhir-server audit verify` uses; if the database dies, the server starts it
again, answering 503 meanwhile. SIGINT (Ctrl+C) or SIGTERM stops it cleanly."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and every option's default after its help."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser(
        "serve",
        help="start the FHIR server",
        description=SERVE_DESCRIPTION,
        formatter_class=_HelpFormatter,
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve_parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on")
    serve_parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes (more than 1 needs FHIR_MONGODB_URI: the embedded database is single-process)",
    )
    serve_parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long open requests may finish before their connections are closed",
    )
    serve_parser.set_defaults(run=serve)

    token_parser = commands.add_parser("token", help="mint a development access token")
    token_parser.add_argument("--sub", required=True, help="subject (user or client id)")
    token_parser.add_argument(
        "--scope", action="append", help="SMART scope, repeatable (default user/*.cruds)"
    )
    token_parser.add_argument("--client-id", default="fhir-server-cli")
    token_parser.add_argument("--fhir-user", help="e.g. Practitioner/123 or Patient/abc")
    token_parser.add_argument("--patient", help="patient id in context (patient/ scopes)")
    token_parser.add_argument("--name", help="ihe_iua.subject_name")
    token_parser.add_argument("--role", action="append", help="profession code or system|code, repeatable")
    token_parser.add_argument("--purpose", action="append", help="purpose of use (TREAT, BTG...), repeatable")
    token_parser.add_argument("--organization", help="ihe_iua.subject_organization")
    token_parser.add_argument("--organization-id", help="ihe_iua.subject_organization_id")
    token_parser.add_argument("--npi", help="ihe_iua.national_provider_identifier (IDNPS)")
    token_parser.add_argument("--person-id", help="ihe_iua.person_id (the patient's INS)")
    token_parser.add_argument(
        "--audience",
        help="aud claim (default: FHIR_AUTH_AUDIENCE, else FHIR_BASE_URL, else http://127.0.0.1:PORT/fhir)",
    )
    token_parser.add_argument(
        "--port", type=int, default=8080, help="the served port, for the default audience (default 8080)"
    )
    token_parser.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token_parser.set_defaults(run=token)

    audit_parser = commands.add_parser("audit", help="audit trail tools")
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    verify_parser = audit_commands.add_parser("verify", help="walk the AuditEvent hash chains")
    verify_parser.add_argument(
        "--uri", help="MongoDB URI (default FHIR_MONGODB_URI or the embedded database)"
    )
    verify_parser.set_defaults(run=audit_verify)

    demo_parser = commands.add_parser("demo", help="play the consent and audit story step by step")
    demo_parser.add_argument(
        "--base-url", help="a running server (default: start one on the embedded database in a temp dir)"
    )
    demo_parser.add_argument("--data-dir", help="that server's FHIR_DATA_DIR, for its development key")
    demo_parser.add_argument("--audience", help="aud of the minted tokens (default: the base URL)")
    demo_parser.set_defaults(run=demo)

    import_parser = commands.add_parser("import", help="load NDJSON files or Bundles into a server")
    import_parser.add_argument(
        "files", nargs="+", help=".ndjson files, or Bundles (batch, transaction, collection)"
    )
    import_parser.add_argument("--base-url", help=BASE_URL_HELP)
    import_parser.add_argument("--token", help="bearer token (default: minted with the development key)")
    import_parser.add_argument("--data-dir", help="the server's FHIR_DATA_DIR, for its development key")
    import_parser.add_argument("--audience", help="aud of the minted token (default: the base URL)")
    import_parser.add_argument("--batch-size", type=int, default=100, help="resources per batch Bundle")
    import_parser.set_defaults(run=import_files)

    export_parser = commands.add_parser("export", help="run a bulk $export and download its NDJSON files")
    export_parser.add_argument("--base-url", help=BASE_URL_HELP)
    export_parser.add_argument("--level", choices=["system", "patient", "group"], default="system")
    export_parser.add_argument("--group", help="Group id (with --level group)")
    export_parser.add_argument("--type", action="append", help="resource type to export, repeatable")
    export_parser.add_argument("--since", help="FHIR instant: what changed since (a transactionTime)")
    export_parser.add_argument("--type-filter", action="append", help="[type]?[search], repeatable")
    export_parser.add_argument("--output", default="export", help="directory for the files (./export)")
    export_parser.add_argument("--token", help="bearer token (default: minted with the development key)")
    export_parser.add_argument("--client-id", default="fhir-server-export", help="client of a minted token")
    export_parser.add_argument("--data-dir", help="the server's FHIR_DATA_DIR, for its development key")
    export_parser.add_argument("--audience", help="aud of the minted token (default: the base URL)")
    export_parser.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout, seconds")
    export_parser.set_defaults(run=export_files)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
