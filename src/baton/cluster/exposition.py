"""``/metrics`` of a cluster: every model replica's own Prometheus figures, in one page.

Ray routes a scrape to one replica, never to all of them, so each replica posts its
engine's exposition to the board with its other figures (:mod:`baton.cluster.board`) and
the ingress merges the posts: each sample gains the ``replica`` and ``node`` labels of the
replica that counted it, and each metric family is written once, whatever the number of
replicas. Summing over ``replica`` in PromQL gives the model's figures across the cluster
(``sum by (model, version) (rate(baton_requests_total[1m]))``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

#: The labels a replica's samples gain (a replica's own samples never carry them).
PLACE = ("replica", "node")


def merge(expositions: Iterable[tuple[dict[str, str], str]]) -> bytes:
    """One exposition from ``(place labels, exposition text)`` pairs, one per replica."""
    families: dict[str, Metric] = {}
    for place, text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
            merged.samples += [s._replace(labels={**s.labels, **place})
                               for s in family.samples]
    registry = CollectorRegistry()
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)
