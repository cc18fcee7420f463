"""`fhir-server demo`: the story of a patient and her care team, played step by step over HTTP.

Claire Martin's record is opened by a platform; she grants her GP, authorises then blocks a cardiologist,
grants her osteopath read-only access, masks a document, revokes the osteopath, an emergency physician
breaks the glass, and Claire lists who accessed her record. The steps are data (demo/story.py); each
prints the FHIR request and its outcome, and is checked against what docs/consent.md, docs/audit.md
promise: any difference makes the exit status 1.

The story assumes the default opt-in policy (`FHIR_CONSENT_DEFAULT=deny`). Without `--base-url` the
demo starts its own server on the embedded database in a temporary directory (demo/server.py), which
the conformance launcher reuses. Tokens are minted with the development key of the server's
FHIR_DATA_DIR (docs/configuration.md, docs/tokens.md).
"""

from fhir_server.demo.server import LocalServer, local_server
from fhir_server.demo.story import run_demo

__all__ = ["LocalServer", "local_server", "run_demo"]
