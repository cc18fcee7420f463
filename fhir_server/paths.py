"""Where the data the server is driven by lives: `capability/` and `profiles/`.

In a source checkout (editable install) they sit beside the package; an installed wheel carries
them under `<prefix>/share/fhir-server/` (pyproject `data-files`).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _data_dir(name: str) -> Path:
    beside_package = Path(__file__).resolve().parents[1] / name
    if beside_package.is_dir():
        return beside_package
    return Path(sys.prefix) / "share" / "fhir-server" / name


CAPABILITY_DIR = _data_dir("capability")
PROFILES_DIR = _data_dir("profiles")
