"""``dfdb fleet``: many local controllers against one database, as a deployment would have
them. Each controller is a SELECTIVE :class:`~dfdb.Replica` for its own chassis, driven by
:class:`~dfdb.replica.ChassisTopics`, with its own connection (as a real host has); the
controllers are spread over worker processes. A writer changes the topology at a set rate.

Scenarios: a cold start (all controllers at once), the steady state (write→applied latency),
a server restart with its data (no controller should relist), and history lost beyond every
controller's cursor (everyone relists, paced by the per-process relist limiter). Every run
ends by comparing each controller's Replica with the database for its scope.

Loaded only by ``dfdb fleet``.
"""

from __future__ import annotations

from dfdb.fleet.report import print_result
from dfdb.fleet.run import SCENARIOS, FleetConfig, FleetResult, run_fleet

__all__ = ["SCENARIOS", "FleetConfig", "FleetResult", "print_result", "run_fleet"]
