"""Where the data the server is driven by lives: `capability/` and `profiles/`.

Every data path of the package goes through this module. In a source checkout (editable install)
the directories sit beside the package; an installed wheel carries them as data files under
`<scheme data>/share/fhir-server/` (pyproject `data-files`), which is `sys.prefix` for a venv or a
system install but `site.USER_BASE` for `pip install --user`: the installed distribution's own
file list says where they went, so no install scheme is guessed.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

DISTRIBUTION = "fhir-server"
DATA_PREFIX = ("share", "fhir-server")


def _installed_data_dir(name: str) -> Path | None:
    try:
        files = metadata.distribution(DISTRIBUTION).files or ()
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.parts[-4:-1] == (*DATA_PREFIX, name):
            return Path(str(file.locate())).resolve().parent
    return None


def _data_dir(name: str) -> Path:
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / name).is_dir():
        return checkout / name
    installed = _installed_data_dir(name)
    if installed is None or not installed.is_dir():
        raise FileNotFoundError(
            f"fhir-server data directory {name!r} is neither in a source checkout ({checkout}) "
            f"nor among the installed distribution's data files: reinstall the fhir-server wheel"
        )
    return installed


CAPABILITY_DIR = _data_dir("capability")
PROFILES_DIR = _data_dir("profiles")
