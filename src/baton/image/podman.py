"""Calling podman (and the other tools a build runs): Baton's own containers.conf, and
failures turned into errors with a code.

The configuration shipped beside this module (runc, cgroupfs, ulimits of 1024) is applied
through ``CONTAINERS_CONF`` unless the operator set that variable: their choice wins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from baton.errors import BatonError

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


class ImageBuildError(BatonError):
    """An image could not be built, inspected or saved; ``details['output']`` says why."""

    code = "IMAGE_BUILD_FAILED"
    exit_code = 4


def podman_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment podman runs with: ``CONTAINERS_CONF`` defaults to Baton's file."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman_binary() -> str:
    found = shutil.which("podman")
    if found is None:
        raise BatonError("podman is not installed: baton image builds with podman "
                         "(apt-get install -y podman buildah runc)", code="PODMAN_MISSING",
                         details={"tool": "podman"})
    return found


def run_tool(cmd: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
             cwd: Path | None = None, timeout: float | None = None, tail: int = 10) -> str:
    """Run a build tool (podman, debootstrap, uv, pip); its standard output, or
    :class:`ImageBuildError` saying ``what`` failed with the tool's last ``tail`` lines."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    if proc.returncode != 0:
        last = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-tail:])
        raise ImageBuildError(f"{what} failed: {last}", details={
            "command": list(cmd), "output": proc.stderr + proc.stdout})
    return proc.stdout


def podman(args: Sequence[str], *, what: str, cwd: Path | None = None,
           timeout: float | None = None) -> str:
    """Run ``podman ARGS`` with :func:`podman_env` (see :func:`run_tool`)."""
    return run_tool([podman_binary(), *args], what=what, env=podman_env(), cwd=cwd,
                    timeout=timeout, tail=15)


def image_exists(name: str) -> bool:
    proc = subprocess.run([podman_binary(), "image", "exists", name], env=podman_env(),
                          capture_output=True, stdin=subprocess.DEVNULL)
    return proc.returncode == 0
