"""The chart renderer keeps Go's text/template and Helm's semantics where the chart relies on
them (expected outputs are what `helm template` prints for the same template and values)."""

from __future__ import annotations

import pytest

from tests.deploy.gotemplate import Renderer, TemplateError, helm_values


def run(src: str, values: dict | None = None) -> str:
    r = Renderer()
    nodes = r.add(src)
    ctx = {"Values": helm_values(values or {}), "Release": {"Name": "rel"}}
    return r.render(nodes, ctx, ctx)


@pytest.mark.parametrize(
    ("src", "values", "out"),
    [
        ("a  {{- .Values.x -}}  b", {"x": 1}, "a1b"),
        ("{{ .Values.n }} {{ .Values.n | int }} {{ .Values.f }}", {"n": 8388608, "f": 0.9},
         "8.388608e+06 8388608 0.9"),
        ("{{ .Values.small }}|{{ .Values.missing }}|", {"small": 100000}, "100000||"),
        ("{{ if .Values.a }}A{{ else if .Values.b }}B{{ else }}C{{ end }}", {"b": "y"}, "B"),
        ("{{ if .Values.l }}x{{ else }}empty{{ end }}", {"l": []}, "empty"),
        ("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}", {"m": {"b": 2, "a": "x"}},
         "a=x;b=2;"),
        ("{{ range .Values.l }}[{{ . }}]{{ else }}none{{ end }}", {"l": []}, "none"),
        ("{{ with .Values.w }}{{ .k }}{{ end }}", {"w": {"k": "v"}}, "v"),
        ('{{ define "t" }}name: {{ .n }}{{ end }}x:{{- include "t" (dict "n" 1) | nindent 2 }}',
         {}, "x:\n  name: 1"),
        ("{{ toYaml .Values.m | indent 2 }}", {"m": {"b": [1, 2], "a": 3.5}},
         "  a: 3.5\n  b:\n  - 1\n  - 2"),
        ('{{ printf "%s-%s" .Release.Name "x" | trunc 5 | quote }}', {}, '"rel-x"'),
        ('{{ and 1 "" }}|{{ or "" "z" }}|{{ not 0 }}|{{ eq 2 (.Values.n | int) }}', {"n": 2},
         "|z|true|true"),
        ('{{ $x := "v" }}{{ if true }}{{ $x }}{{ end }}', {}, "v"),
        ("{{/* a\ncomment */}}ok", {}, "ok"),
    ],
)  # fmt: skip
def test_go_semantics(src: str, values: dict, out: str) -> None:
    assert run(src, values) == out


@pytest.mark.parametrize(
    ("src", "values", "error"),
    [
        ("{{ .Values.a.b }}", {}, "nil pointer evaluating .Values.a.b"),
        ('{{ required "need x" .Values.x }}', {"x": ""}, "need x"),
        ("{{ .Values.m }}", {"m": {"a": 1}}, "toYaml"),  # Go would print map[a:1]
        ('{{ printf "%d" .Values.n }}', {"n": 3}, "%d"),  # float64: Go prints %!d(float64=3)
        ('{{ template "x" . }}', {}, "outside the supported subset"),
        ("{{ lower .Values.s }}", {"s": "A"}, "outside the supported subset"),
        ("{{ if .Values.a }}", {}, "unclosed if"),
        ("{{ eq .Values.n 2 }}", {"n": 2}, "incompatible types"),  # float64 vs int, as in Helm
    ],
)
def test_outside_or_wrong_is_an_error(src: str, values: dict, error: str) -> None:
    with pytest.raises(TemplateError, match=error.replace("(", r"\(").replace("%", "%")):
        run(src, values)


def test_required_accepts_an_empty_list_as_helm_does() -> None:
    """Helm's required refuses nil and "" only; the chart uses fail for an empty list."""
    assert run('{{ $l := required "x" .Values.l }}ok', {"l": []}) == "ok"


def test_a_field_chain_ending_in_a_method_is_called_as_go_calls_it() -> None:
    """Helm's .Files.Get "x": a method at the end of a field chain is called with the command's
    other operands, the piped value last; what it returns is text, not templated again."""
    calls: list[str] = []

    def get(name: str) -> str:
        calls.append(name)
        return {"a.txt": "{{ $labels.pool }}\nb"}.get(name, "")

    r = Renderer()
    ctx = {"Files": {"Get": get}, "Values": {"f": "a.txt"}}

    def run_ctx(src: str) -> str:
        return r.render(r.add(src), ctx, ctx)

    assert run_ctx('{{ .Files.Get "a.txt" | nindent 2 }}') == "\n  {{ $labels.pool }}\n  b"
    assert run_ctx('{{ "a.txt" | .Files.Get | quote }}') == '"{{ $labels.pool }}\\nb"'
    assert run_ctx("{{ .Files.Get .Values.f }}") == "{{ $labels.pool }}\nb"
    assert run_ctx('{{ $.Files.Get "nope" }}|{{ with .Files }}{{ .Get "a.txt" }}{{ end }}') == (
        "|{{ $labels.pool }}\nb"
    )
    assert calls == ["a.txt", "a.txt", "a.txt", "nope", "a.txt"]
    for src, error in [
        ("{{ .Files.Get }}", "want 1 got 0"),
        ("{{ quote .Files.Get }}", "want 1 got 0"),  # as an argument: called with none
        ('{{ "b" | .Files.Get "a.txt" }}', "want 1 got 2"),
        ('{{ .Values.f "x" }}', "cannot call a non-function"),  # a value is still no function
    ]:
        with pytest.raises(TemplateError, match=error):
            run_ctx(src)
