from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ingest.models import Metric
from neruba.api import ScopedApi


class MetricOutput(serializers.ModelSerializer):
    class Meta:
        model = Metric
        fields = ["code", "name", "aggregation", "field"]


class MetricListApi(ScopedApi):
    required_scopes = {"GET": "read"}

    @extend_schema(operation_id="metrics_list", responses={200: MetricOutput(many=True)})
    def get(self, request: Request) -> Response:
        return self.paginated(request, Metric.objects.all(), MetricOutput)
