"""Runs inside an image: every package it holds, as JSON on standard output.

The engine's venv and each model environment are asked through their own interpreters
(:func:`baton.env.packages.installed`); the Debian packages through dpkg's database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from baton.env.packages import installed
from baton.image.layout import ENVS, VENV

_DPKG_FORMAT = "${Package}\t${Version}\t${Architecture}\n"


def inventory() -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {
        "engine": [[p.name, p.version] for p in installed(Path(str(VENV), "bin", "python"))]}
    for env in sorted(p for p in Path(str(ENVS)).iterdir()
                      if p.is_dir() and not p.name.startswith(".")):  # not the build locks
        out[f"model:{env.name}"] = [[p.name, p.version]
                                    for p in installed(env / "bin" / "python")]
    listing = subprocess.run(["dpkg-query", "-W", "-f", _DPKG_FORMAT], capture_output=True,
                             text=True, check=True).stdout
    out["debian"] = [line.split("\t") for line in listing.splitlines() if line]
    return out


if __name__ == "__main__":
    json.dump(inventory(), sys.stdout)
