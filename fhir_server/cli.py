"""`fhir-server serve|token|audit|demo|import|export` — the command line of DESIGN §6."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fhir_server.settings import Settings

PROFESSION_SYSTEM = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def _coding(text: str, default_system: str) -> dict[str, str]:
    system, separator, code = text.rpartition("|")
    return {"system": system if separator else default_system, "code": code}


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from fhir_server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(Settings(), host=args.host, port=args.port)
    # No proxy headers at the ASGI layer: the API believes X-Forwarded-For only from FHIR_TRUSTED_PROXIES.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False)
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
    audience = args.audience or settings.auth_audience or settings.resolved_base_url("127.0.0.1", 8080)
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

    settings = Settings()
    uri = args.uri or settings.mongodb_uri
    if uri is None:
        from fhir_server.storage.embedded import EmbeddedDatabase

        with EmbeddedDatabase(settings.data_dir.resolve() / "embedded-db") as database:
            return run_verify(database.uri, settings.database)
    return run_verify(uri, settings.database)


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

    base_url = args.base_url.rstrip("/")
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

    base_url = args.base_url.rstrip("/")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="start the FHIR server")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8080)
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
    token_parser.add_argument("--audience", help="aud claim (default: FHIR_AUTH_AUDIENCE or the base URL)")
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
    import_parser.add_argument("--base-url", default="http://127.0.0.1:8080/fhir")
    import_parser.add_argument("--token", help="bearer token (default: minted with the development key)")
    import_parser.add_argument("--data-dir", help="the server's FHIR_DATA_DIR, for its development key")
    import_parser.add_argument("--audience", help="aud of the minted token (default: the base URL)")
    import_parser.add_argument("--batch-size", type=int, default=100, help="resources per batch Bundle")
    import_parser.set_defaults(run=import_files)

    export_parser = commands.add_parser("export", help="run a bulk $export and download its NDJSON files")
    export_parser.add_argument("--base-url", default="http://127.0.0.1:8080/fhir")
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
