"""Baton: package, check and serve analytic models in isolated environments.

The public API is light: importing ``baton`` imports no server, no numpy and no pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["BatonError", "__version__", "package"]

if TYPE_CHECKING:
    from baton.errors import BatonError
    from baton.sdk import package


def __getattr__(name: str) -> Any:
    if name == "package":
        from baton.sdk import package

        return package
    if name == "BatonError":
        from baton.errors import BatonError

        return BatonError
    raise AttributeError(f"module 'baton' has no attribute {name!r}")
