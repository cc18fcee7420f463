"""Wheel smoke test: build the wheel, install it non-editable in a fresh venv, serve from it, and use it.

What a user of `pip install fhir-server` or of the Docker image gets, checked end to end:

1. `pip wheel --no-deps` of the checkout; a fresh venv with the wheel installed (not editable) with
   its `embedded` extra; the package and its capability/ and profiles/ data must come from the venv.
2. `fhir-server serve` of that venv, from a working directory outside the checkout (so the checkout
   cannot shadow the package), on the embedded database in a temporary FHIR_DATA_DIR, on a free port.
3. Over HTTP: /health, /fhir/metadata, a Patient created with a system token minted by that venv's
   `fhir-server token` for the served base URL, read back, and the AuditEvent of that read found
   with a `system/AuditEvent.rs` token.
4. SIGTERM: the server stops cleanly and promptly, and releases its data directory.

Every failure prints what went wrong (and the server's log) and exits 1. Standard library only, so any
Python 3.11 runs it: `python .ci/wheel_smoke.py` (the `wheel-smoke` make target).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import Message
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FHIR_JSON = "application/fhir+json"
STARTUP_SECONDS = 180.0
AUDIT_WAIT_SECONDS = 15.0
STOP_SECONDS = 10.0
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"use": "official", "system": "urn:oid:1.2.250.1.213.1.4.10", "value": "292077511203476"}],
    "name": [{"use": "official", "family": "Smoke", "given": ["Wheel"]}],
    "gender": "female",
    "birthDate": "1992-07-08",
}


class SmokeFailure(Exception):
    """A check of the smoke test did not hold."""


def step(message: str) -> None:
    print(f"wheel-smoke: {message}", flush=True)


def run(
    command: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str:
    result = subprocess.run(
        [str(part) for part in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise SmokeFailure(
            f"`{' '.join(str(part) for part in command)}` exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result.stdout


def build_and_install(work: Path) -> Path:
    """The venv's bin/ directory, with the freshly built wheel installed non-editable."""
    dist, venv = work / "dist", work / "venv"
    for directory in (dist, venv):
        shutil.rmtree(directory, ignore_errors=True)
    # setuptools builds in the checkout's build/ and never deletes from it: a module removed from the
    # sources would otherwise still ship in the wheel.
    for stale in [ROOT / "build" / "lib", *ROOT.glob("build/bdist.*")]:
        shutil.rmtree(stale, ignore_errors=True)
    step("building the wheel")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, ROOT])
    wheels = sorted(dist.glob("fhir_server-*.whl"))
    if len(wheels) != 1:
        raise SmokeFailure(f"expected one fhir_server wheel in {dist}, found {wheels}")
    step(f"installing {wheels[0].name}[embedded] into a fresh venv")
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheels[0]}[embedded]"])
    return venv / "bin"


def check_installed(bin_dir: Path, cwd: Path) -> None:
    """The package and its data files come from the venv, not from the checkout."""
    probe = (
        "import json, fhir_server, fhir_server.paths as p; "
        "print(json.dumps([fhir_server.__file__, str(p.CAPABILITY_DIR), str(p.PROFILES_DIR)]))"
    )
    located = json.loads(run([bin_dir / "python", "-c", probe], env=clean_env({}), cwd=cwd))
    venv = bin_dir.parent.resolve()
    for path in located:
        if not Path(path).resolve().is_relative_to(venv):
            raise SmokeFailure(f"{path} is not inside the venv {venv}: the install is not what is tested")
    step(f"package and data files come from the venv ({located[1]})")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without FHIR_* settings or Python path overrides, plus `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("FHIR_") and key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http(
    method: str, url: str, *, token: str | None = None, body: Mapping[str, Any] | None = None
) -> tuple[int, Message, Any]:
    sent = {"Accept": FHIR_JSON}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = FHIR_JSON
    request = urllib.request.Request(url, data=data, headers=sent, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, response_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, error.headers, error.read()
    return status, response_headers, json.loads(raw) if raw else None


def expect(condition: bool, message: str, payload: Any = None) -> None:
    if not condition:
        detail = f"\n{json.dumps(payload, indent=1)[:3000]}" if payload is not None else ""
        raise SmokeFailure(f"{message}{detail}")


def wait_healthy(origin: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SmokeFailure(f"fhir-server serve exited with {server.returncode} before answering")
        try:
            status, _, body = http("GET", f"{origin}/health")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status, body = 0, None
        if status == 200:
            expect(body.get("database") == "up", "/health does not report the database up", body)
            return
        time.sleep(0.3)
    raise SmokeFailure(f"fhir-server serve did not answer /health within {STARTUP_SECONDS:.0f} s")


def mint(bin_dir: Path, env: Mapping[str, str], cwd: Path, port: int, *scopes: str) -> str:
    """A token of the venv's `fhir-server token`, whose default audience is the base URL served on `port`."""
    command: list[str | Path] = [bin_dir / "fhir-server", "token", "--sub", "wheel-smoke"]
    command += ["--client-id", "wheel-smoke", "--port", str(port)]
    for scope in scopes:
        command += ["--scope", scope]
    return run(command, env=env, cwd=cwd).strip()


def exercise(bin_dir: Path, env: Mapping[str, str], cwd: Path, port: int) -> None:
    base_url = f"http://127.0.0.1:{port}/fhir"
    status, _, metadata = http("GET", f"{base_url}/metadata")
    expect(status == 200 and metadata.get("resourceType") == "CapabilityStatement", "bad metadata", metadata)
    step("/health and /fhir/metadata answer")

    token = mint(bin_dir, env, cwd, port, "system/*.cruds")
    status, headers, created = http("POST", f"{base_url}/Patient", token=token, body=PATIENT)
    expect(status == 201, f"creating a Patient answered {status}", created)
    patient_id = created["id"]
    location = headers.get("Location") or ""
    expect(f"/Patient/{patient_id}/_history/" in location, f"Location {location!r} does not name the Patient")
    status, _, read = http("GET", f"{base_url}/Patient/{patient_id}", token=token)
    expect(
        status == 200 and read.get("id") == patient_id,
        f"reading Patient/{patient_id} answered {status}",
        read,
    )
    expect(read.get("name") == PATIENT["name"], "the Patient read back differs from the one created", read)
    step(f"Patient/{patient_id} created and read back")

    auditor = mint(bin_dir, env, cwd, port, "system/AuditEvent.rs")
    query = f"{base_url}/AuditEvent?entity=Patient/{patient_id}&action=R"
    deadline = time.monotonic() + AUDIT_WAIT_SECONDS
    while True:
        status, _, bundle = http("GET", query, token=auditor)
        expect(status == 200, f"searching AuditEvent answered {status}", bundle)
        events = [entry["resource"] for entry in bundle.get("entry", [])]
        if any(event.get("resourceType") == "AuditEvent" for event in events):
            break
        expect(time.monotonic() < deadline, f"no AuditEvent records the read of Patient/{patient_id}", bundle)
        time.sleep(0.5)
    step(f"the read of Patient/{patient_id} is audited ({len(events)} AuditEvent)")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise SmokeFailure(f"fhir-server serve did not stop within {STOP_SECONDS:.0f} s of SIGTERM") from None
    expect(code == 0, f"fhir-server serve exited {code} on SIGTERM")
    step(f"stopped cleanly in {time.monotonic() - started:.1f} s")


def check_released(data_dir: Path) -> None:
    """A clean stop removes the running database's URI file and empties the owner's pid file."""
    uri_file, owner_file = data_dir / "embedded-db" / "mongodb.uri", data_dir / "embedded-db" / "owner.pid"
    expect(not uri_file.exists(), f"{uri_file} is still there after a clean stop")
    expect(owner_file.read_text() == "", f"{owner_file} still names a pid after a clean stop")


def smoke(work: Path) -> None:
    bin_dir = build_and_install(work)
    with tempfile.TemporaryDirectory(prefix="fhir-wheel-smoke-") as temporary:
        cwd = Path(temporary)
        check_installed(bin_dir, cwd)
        port = free_port()
        env = clean_env({"FHIR_DATA_DIR": str(cwd / "data"), "FHIR_CONSENT_DEFAULT": "deny"})
        log = cwd / "server.log"
        step(f"starting {bin_dir / 'fhir-server'} serve on port {port} in {cwd}")
        with log.open("wb") as output:
            server = subprocess.Popen(
                [bin_dir / "fhir-server", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_healthy(f"http://127.0.0.1:{port}", server)
            exercise(bin_dir, env, cwd, port)
            stop(server)
            check_released(cwd / "data")
        except BaseException:
            if server.poll() is None:
                server.kill()
                server.wait()
            print(
                f"wheel-smoke: server log ({log}):\n{log.read_text(errors='replace')[-6000:]}",
                file=sys.stderr,
            )
            raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=ROOT / "build" / "wheel-smoke",
        help="where the wheel and the venv are built (default: build/wheel-smoke)",
    )
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        smoke(args.work_dir.resolve())
    except SmokeFailure as failure:
        print(f"wheel-smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    step("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
