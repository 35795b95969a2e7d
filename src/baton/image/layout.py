"""Where things live inside a Baton image: one definition for the build and the entrypoint."""

from __future__ import annotations

from pathlib import PurePosixPath

#: The engine's virtual environment (Baton and its dependencies).
VENV = PurePosixPath("/opt/baton/venv")
#: Model environments, built at image build time by EnvBuilder (read-only at run time).
ENVS = PurePosixPath("/opt/baton/envs")
#: The bundle's files, exactly those its content index lists.
BUNDLE = PurePosixPath("/opt/baton/bundle")
#: BATON_HOME: the only place the engine writes (prediction log, extracted pulls). A
#: VOLUME in the image; mount a tmpfs or an emptyDir there under a read-only root.
HOME = PurePosixPath("/var/lib/baton")
#: The unprivileged user and group the engine runs as (group 0, as OpenShift expects).
USER = "10001:0"
PORT = 8000
