"""The engine's prediction log as the settings describe it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from baton.monitor.predlog.log import PredictionLog

if TYPE_CHECKING:
    from baton.monitor.export import PredictionExport
    from baton.settings import Settings


def open_prediction_log(settings: Settings) -> PredictionLog | None:
    """The engine's prediction log as the settings describe it (None when sampling is 0):
    its store, and its export when ``prediction_log_sink`` names one. Nothing is opened."""
    if settings.prediction_log_sample <= 0:
        return None
    from baton.monitor.predlog.store import DatabaseStore  # SQLAlchemy: not on import

    if settings.prediction_log_store == "registry":
        store = DatabaseStore(settings.registry_url)
    else:
        store = DatabaseStore.local(settings.prediction_log_path)
    export: PredictionExport | None = None
    if settings.prediction_log_sink:
        from baton.monitor.export import PredictionExport

        export = PredictionExport(settings.prediction_log_sink)
    return PredictionLog(store, sample=settings.prediction_log_sample,
                         retention_days=settings.prediction_log_days, export=export)
