"""What a served model's workers are started with, from its bundle, environment and the
settings: kept apart from the request path (:mod:`baton.serving.model`) so that ``baton
serve`` can start a model's worker template before it imports the engine
(:func:`baton.serving.opening.open_ahead`)."""

from __future__ import annotations

from baton.bundle.loader import Bundle
from baton.env.builder import Environment
from baton.runtime.isolation import Isolation
from baton.runtime.runners import RUNNERS
from baton.runtime.spec import WorkerSpec
from baton.settings import Settings

__all__ = ["isolation", "worker_spec"]


def worker_spec(bundle: Bundle, env: Environment, settings: Settings) -> WorkerSpec:
    m = bundle.manifest
    return WorkerSpec(
        model=m.name, python=env.interpreter, bundle_dir=bundle.path, env_dir=env.path,
        load={"model": m.model.to_dict(), "kind": m.contract.kind,
              "inputs": m.contract.input_names, "outputs": m.contract.output_names,
              "fields": [s.to_dict() for s in m.contract.inputs]},
        env={"PYTHONUNBUFFERED": "1", **env.variables}, load_timeout=settings.load_timeout,
        threads=settings.worker_threads, isolation=isolation(m.isolation, settings),
        runner=RUNNERS[m.model.runner], template=settings.worker_template)


def isolation(asked: Isolation, settings: Settings) -> Isolation:
    """What the bundle asks for and what the operator sets, the stricter on every point."""
    return asked.stricter(Isolation(
        level=settings.isolation or "process", network=settings.model_network,
        memory_mb=settings.worker_memory_mb, cpus=settings.worker_cpus,
        open_files=settings.worker_open_files, processes=settings.worker_processes))
