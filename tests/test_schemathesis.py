"""schemathesis (requirements-dev.txt) against the real service's /openapi.json: no 5xx, every answer matches the spec.

gunicorn on loopback serves the tiny fusion-calibrated bundle with a fresh SQLite store and
no API keys, so every route is reachable. A small, derandomized budget per operation keeps
the run short and the same every time.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)

from tests.live_service import running_service

# No 5xx; status, content type, headers and body as documented; a request the spec forbids
# gets a 4xx. Not schemathesis's "schema-valid data must be accepted" check: an image field's
# schema (a binary string) cannot say which bytes decode to a usable image, so the service's
# 422 for a 1x1 PNG is right.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def api_schema(fusion_bundle, tmp_path_factory):
    """The served OpenAPI document, loaded by schemathesis with the service's URL as its base."""
    work = tmp_path_factory.mktemp("schemathesis")
    with running_service(fusion_bundle, work / "gunicorn.log",
                         env={"DATABASE_URL": f"sqlite:///{work / 'store.db'}"}) as client:
        base = f"http://127.0.0.1:{client.port}"
        yield schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=30)


def test_every_operation_conforms(api_schema):
    """Every operation, with requests the spec allows and requests it forbids: each answer passes CHECKS."""
    failures, labels = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()  # an operation the spec does not describe well enough raises here
        labels.append(operation.label)
        # requests the spec allows, then (where there are inputs to get wrong) requests it forbids
        has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
        for mode in GenerationMode if has_inputs else [GenerationMode.POSITIVE]:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=10, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def conforms(case):
                case.call_and_validate(checks=CHECKS, timeout=30)

            try:
                conforms()
            except (Exception, FailureGroup) as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
    assert not failures, "\n\n".join(failures)
    # schemathesis leaves out the path the document itself came from (/openapi.json)
    assert {label.split(" ", 1)[1] for label in labels} == set(api_schema.raw_schema["paths"]) - {"/openapi.json"}
