"""``baton plan``: from a bundle's ``baton check`` to the deployment that meets a target load.

:func:`plan_input` reads the check (or runs one), :func:`recommend` searches workers per
replica and replicas with the queueing model of :mod:`baton.plan.model`, and the
:class:`Plan` it returns carries the prediction, the reasoning and the values that
``baton deploy kubernetes`` and the bundle's ``[serving]`` table take. docs/scale.md states
the model and its assumptions.
"""

from __future__ import annotations

from baton.plan.figures import PlanInput, plan_input
from baton.plan.model import HEADROOM, FrontCost, Load, ModelTimes, Prediction, predict
from baton.plan.recommend import Node, Plan, PlanError, recommend

#: The front's CPU per request and per row when none is given: bench/README.md, Baton's
#: main process serving 1-row (84 % of a core at 13,618 req/s) and 100-row requests (93 % at
#: 4,320 req/s) of a 20-feature tensor model.
DEFAULT_FRONT = FrontCost(62.0, 1.5, "bench/README.md, tensor requests on this machine")

__all__ = ["DEFAULT_FRONT", "HEADROOM", "FrontCost", "Load", "ModelTimes", "Node", "Plan",
           "PlanError", "PlanInput", "Prediction", "plan_input", "predict", "recommend"]
