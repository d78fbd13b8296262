"""deploy/helm/loraplex/values.schema.json: what `helm install` would refuse.  The values of
every variant the chart tests render pass it; bad values fail it with a message that says why."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.deploy.helm_render import CHART, deep_merge, default_values
from tests.deploy.test_helm_chart import TENANTS, VARIANTS


def _schema_errors(overrides: dict[str, Any]) -> list[str]:
    """What `helm install` would refuse: the merged values against values.schema.json."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    values = deep_merge(default_values(), overrides)
    return [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(values)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_values_of_every_variant_pass_the_schema(variant: str) -> None:
    assert _schema_errors(deep_merge(TENANTS, VARIANTS[variant])) == []


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"workers": {"gpuMemoryUtilization": 1.5}}, "1.5 is greater than the maximum of 1"),
        ({"workers": {"gpuMemoryUtilization": 0}}, "0 is less than or equal to the minimum of 0"),
        ({"decode": {"resources": {"limits": {"nvidia.com/gpu": 2}}}}, "1 was expected"),
        ({"autoscaling": {"backend": "custom"}}, "'custom' is not one of ['keda', 'hpa']"),
        ({"scheduler": {"fairness": "lottery"}}, "'lottery' is not one of"),
        ({"gateway": {"port": 0}}, "0 is less than the minimum of 1"),
        ({"tenants": {"tenants": [{"name": "a", "api_key": "short"}]}}, "'short' is too short"),
        ({"tenants": {"tenants": [{"name": "a", "api_keys": ["short"]}]}}, "'short' is too short"),
        ({"tenants": {"tenants": [{"name": "a"}]}}, "is not valid under any of the given schemas"),
        (
            {"tenants": {"tenants": [{"name": "a", "api_key": "sk-long-key", "max_queue": 0}]}},
            "0 is less than the minimum of 1",
        ),
    ],
)
def test_bad_values_are_refused_by_the_schema(bad: dict[str, Any], says: str) -> None:
    errors = _schema_errors(bad)
    assert any(says in e for e in errors), errors


def test_tenants_with_several_keys_digests_and_limits_pass_the_schema() -> None:
    tenants = [
        {"name": "a", "api_keys": ["sk-new-key-1", "sk-old-key-1"], "max_queue": 8},
        {"name": "b", "api_key": "sha256:" + "0" * 64, "weight": 2},
    ]
    assert _schema_errors({"tenants": {"tenants": tenants}}) == []
