from __future__ import annotations

from neruba.errors import Conflict


class MetricExists(Conflict):
    code = "metric_exists"
    message = "A metric with that code already exists."
