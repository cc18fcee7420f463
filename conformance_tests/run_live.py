"""Run the conformance suite against a live `fhir-server serve` on the embedded database.

    python conformance_tests/run_live.py [--report-dir reports/conformance] [pytest arguments...]

Starts the server on a free port with a temporary FHIR_DATA_DIR (`fhir_server.demo.local_server`),
waits for /health, runs `pytest conformance_tests --base-url ... --dev-key-dir ... --report-dir ...`,
stops the server, and exits with pytest's status. The server's log is kept in the report directory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from fhir_server.demo import local_server

SUITE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report-dir", default="reports/conformance")
    parser.add_argument("--consent-default", choices=("deny", "permit"), default="deny")
    known, pytest_args = parser.parse_known_args(argv)
    report_dir = Path(known.report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    with local_server(consent_default=known.consent_default, log_dir=report_dir) as server:
        sys.stderr.write(f"conformance: fhir-server at {server.base_url} (log {server.log})\n")
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(SUITE),
            "-p",
            "no:cacheprovider",
            "--base-url",
            server.base_url,
            "--dev-key-dir",
            str(server.data_dir),
            "--report-dir",
            str(report_dir),
            *pytest_args,
        ]
        status = subprocess.run(command, cwd=SUITE.parent, check=False).returncode
    sys.stderr.write(f"conformance: reports in {report_dir}/junit.xml and {report_dir}/report.html\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
