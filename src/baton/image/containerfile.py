"""The Containerfile of a bundle's image, layered for the cache.

Order, least to most often changed: base -> engine venv -> model environment -> bundle
files -> labels. The wheelhouses are bind-mounted into the ``RUN`` steps (never copied into a
layer), and each step names the key of what it installs, because a bind mount's content is
not part of buildah's cache key: a new wheelhouse must change the step's text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from baton.image.layout import BUNDLE, ENVS, HOME, PORT, USER, VENV

_INSTALL = "--quiet --no-index --offline --compile-bytecode --no-cache"


@dataclass(frozen=True)
class Layers:
    base: str
    engine_key: str
    baton_version: str
    python: str
    model_key: str
    labels: Mapping[str, str]


def render(layers: Layers) -> str:
    python = f"/usr/bin/python{layers.python}"
    env = {
        "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(HOME), "BATON_HOME": str(HOME), "BATON_HOST": "0.0.0.0",
        "BATON_PORT": str(PORT)}
    labels = " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in sorted(layers.labels.items()))
    return f"""\
FROM {layers.base}
ENV {" ".join(f'{k}={json.dumps(v)}' for k, v in env.items())}
RUN --mount=type=bind,source=engine,target=/mnt/engine \\
    : engine {layers.engine_key} && \\
    UV_PYTHON_DOWNLOADS=never /mnt/engine/uv venv --quiet --python {python} {VENV} && \\
    /mnt/engine/uv pip install {_INSTALL} --python {VENV}/bin/python \\
      --find-links /mnt/engine/wheels baton=={layers.baton_version} && \\
    mkdir -p {ENVS} {HOME} && ln -s {ENVS} {HOME}/envs && \\
    chown -R {USER} {HOME} && chmod 0775 {HOME}
RUN --mount=type=bind,source=model,target=/mnt/model \\
    : model {layers.model_key} && \\
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never {VENV}/bin/python -m baton.image.prepare \\
      {ENVS} /mnt/model/wheels /mnt/model/environment.json
COPY bundle {BUNDLE}
USER {USER}
WORKDIR {HOME}
VOLUME {HOME}
EXPOSE {PORT}
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \\
  CMD ["{VENV}/bin/python", "-m", "baton.image.health"]
ENTRYPOINT ["{VENV}/bin/python", "-m", "baton.image.entrypoint"]
CMD ["baton", "serve"]
LABEL {labels}
"""
