"""``param`` of a 400 for a FastAPI validation error: the field's path alone, wherever it was
(OpenAI names ``after``, never ``query.after``), and a body field keeps its own name even when it
is called like a location."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

from loraplex.http_errors import validation_message


def _param(*locs: tuple[object, ...]) -> str | None:
    errors = [{"loc": loc, "msg": "bad", "type": "value_error"} for loc in locs]
    return validation_message(RequestValidationError(errors))[1]


def test_query_and_path_parameters_are_named_alone() -> None:
    assert _param(("query", "starting_after")) == "starting_after"
    assert _param(("path", "response_id")) == "response_id"
    assert _param(("header", "x-request-id")) == "x-request-id"


def test_body_fields_keep_their_path() -> None:
    assert _param(("body", "messages", 0, "content")) == "messages.0.content"
    assert _param(("body", "query")) == "query"  # a body field named like a location
    assert _param(("body", "body", "temperature")) == "temperature"  # a batch line's body


def test_a_union_folds_to_its_common_field() -> None:
    assert _param(("body", "prompt", "str"), ("body", "prompt", "list[int]")) == "prompt"
