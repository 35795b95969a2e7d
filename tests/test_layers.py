"""The layers of docs/architecture.md, enforced: a lower layer never imports a higher one.

Every ``import`` in ``src/baton`` counts — at module level, inside a function (a lazy
import is still a dependency) and under ``TYPE_CHECKING`` (a type names the layer too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "baton"

#: The foundation: every layer may use these, and they use none of the upper ones.
LOWER = ("errors", "batch", "settings", "contract", "runtime", "bundle", "backoff", "logs",
         "tracing")
UPPER = ("serving", "server", "cli", "monitor", "registry", "streams", "dashboard", "check",
         "scoring", "image", "deploy", "report", "plan", "cluster", "importers")

#: layer -> the layers it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{low: UPPER for low in LOWER},
    "monitor": ("serving", "server", "registry", "cli", "dashboard"),
    # `baton import`: reads another tool's files and runs the model through `serving`.
    "importers": ("server", "cli", "registry", "dashboard", "streams", "cluster"),
}


def _layer(module: str) -> str | None:
    """``baton.serving.service`` -> ``serving``; anything outside baton -> None."""
    parts = module.split(".")
    if parts[0] != "baton" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """Every baton module ``path`` imports, with its line, relative imports resolved."""
    package = ["baton", *path.relative_to(root).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from baton import serving`` names the layer in the alias
            if module == "baton":
                found += [(node.lineno, f"baton.{a.name}") for a in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)


def _violations(layer: str, root: Path = SRC) -> list[str]:
    forbidden = FORBIDDEN[layer]
    folder = root / layer
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [root / f"{layer}.py"]
    out = []
    for path in files:
        for line, module in _imports(path, root):
            target = _layer(module)
            if target in forbidden:
                out.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(layer: str) -> None:
    assert (SRC / layer).is_dir() or (SRC / f"{layer}.py").is_file(), f"no layer {layer}"
    bad = _violations(layer)
    assert not bad, f"{layer} may not import {', '.join(FORBIDDEN[layer])}:\n" + "\n".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The rule would pass vacuously if the parser missed lazy, relative or typing imports."""
    (tmp_path / "baton" / "runtime").mkdir(parents=True)
    sample = tmp_path / "baton" / "runtime" / "probe.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from baton.serving.service import Engine\n"
        "def f():\n    import baton.cli.main\n    from ..monitor import metrics\n"
        "    from baton import registry\n")
    bad = _violations("runtime", tmp_path / "baton")
    assert [b.split(" imports ")[1] for b in bad] == [
        "baton.serving.service", "baton.cli.main", "baton.monitor", "baton.registry"]


def test_every_module_is_short_enough_to_read() -> None:
    """Issue 11's rule: no module in src/ over 400 lines."""
    long = [f"{p.relative_to(SRC.parent)}: {n}" for p in _modules()
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "modules over 400 lines:\n" + "\n".join(long)
