"""Server launcher for bench/run.py: the real app (`create_app`) under uvicorn, as `fhir-server serve` runs
it, plus a command counter on its MongoDB client and one extra route, `GET /_bench/commands`, that
returns the commands sent so far by name. The route exists only in this benchmark file.

Started by run.py: bench_server.py --port P (settings from the FHIR_* environment, like `serve`).
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import Counter
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pymongo import monitoring
from starlette.responses import JSONResponse, Response

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_server.app import create_app
from fhir_server.settings import Settings

UNCOUNTED = frozenset({"hello", "isMaster", "ismaster", "ping", "endSessions"})
"""Connection housekeeping, not work done for a request."""


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in UNCOUNTED:
            with self._lock:
                self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def build(port: int) -> FastAPI:
    counter = CommandCounter()
    app = create_app(Settings(), port=port, event_listeners=[counter])

    async def commands() -> Response:
        return JSONResponse(counter.snapshot())

    app.add_api_route("/_bench/commands", commands, include_in_schema=False)
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    uvicorn.run(
        build(options.port), host="127.0.0.1", port=options.port, log_level="info", proxy_headers=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
