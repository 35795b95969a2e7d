"""Every runner a worker can be started with, in one place.

A bundle's ``model.runner`` names one of :data:`RUNNERS`. A runner is a program that speaks
the worker protocol (docs/protocol.md) over its standard input and output, run with the
interpreter of the bundle's environment. Adding a language is one entry here, the runner's
own file beside this one, and the conformance suite (tests/runtime/test_conformance.py),
which every runner passes unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The Python runner: standard library only (numpy and pandas when the environment has them).
PYTHON_SCRIPT = HERE / "runner.py"
BUILTIN_SKLEARN = "builtin:sklearn"
BUILTIN_ONNX = "builtin:onnx"


@dataclass(frozen=True)
class Runner:
    """How a worker of a bundle with ``model.runner = name`` is started and what its
    manifest may say."""

    name: str
    summary: str
    #: The program the interpreter runs; then the files it reads beside it (by path).
    script: Path
    beside: tuple[Path, ...] = ()
    #: Entrypoints built into the runner (each loads ``model.artifact``).
    builtins: tuple[str, ...] = ()
    #: Whether a bundle may name its own entrypoint (``module.path:Class``).
    custom: bool = True
    #: The entrypoint of a bundle that names none (None: a bundle must name one).
    default_entrypoint: str | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """What a sandboxed worker must see of the runner."""
        return (self.script, *self.beside)

    def command(self, interpreter: Path) -> list[str]:
        """The worker's command: the environment's interpreter running the script. For
        Python, ``-I`` keeps Baton and the user's site out of the model's ``sys.path`` and
        ``-B`` keeps bytecode out of the bundle."""
        return [str(interpreter), "-I", "-B", str(self.script)]


PYTHON = Runner(
    "python", "a Python model: scikit-learn's pickle, or the bundle's own module:Class",
    PYTHON_SCRIPT, builtins=(BUILTIN_SKLEARN,))
ONNX = Runner(
    "onnx", "an .onnx file run by onnxruntime, without the framework that trained it",
    PYTHON_SCRIPT, beside=(HERE / "onnx_model.py",), builtins=(BUILTIN_ONNX,), custom=False,
    default_entrypoint=BUILTIN_ONNX)

#: Every runner, by the name a manifest gives.
RUNNERS: dict[str, Runner] = {r.name: r for r in (PYTHON, ONNX)}
