"""The web dashboard at ``/ui``: static pages that call the engine's own APIs.

The browser polls the same endpoints a user could (``/v1/models``, ``/v1/stats``,
``/metrics``); the only server-side addition is a same-origin proxy to the registry, which
forwards the user's own token and nothing of the engine's.
"""

from baton.dashboard.app import Dashboard

__all__ = ["Dashboard"]
