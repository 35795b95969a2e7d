"""Runs inside an image build: the model's environment, made by Baton's own EnvBuilder,
offline, from the model's wheelhouse (the build has no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from baton.bundle.manifest import EnvironmentSpec
from baton.env.builder import EnvBuilder


def prepare(envs: Path, wheelhouse: Path, spec_file: Path) -> str:
    spec = json.loads(spec_file.read_text())
    env = EnvBuilder(envs, wheelhouse=wheelhouse, offline=True).ensure(
        EnvironmentSpec(spec["python"], tuple(spec["requirements"])))
    return str(env.path)


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
