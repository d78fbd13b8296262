"""A renderer for the subset of Go templates (with Helm's functions) that the loraplex chart uses.

No Helm binary is reachable from the machines this project builds on, so the chart's tests render
it with this.  It follows Go's text/template where the chart goes, and is strict where Helm is:
a field of a missing value is an error, numbers from values files are float64 (so a large number
printed bare comes out as Go prints it, ``8.388608e+06``: the chart must not do that), and
``<no value>`` prints as nothing.  Anything outside the subset raises TemplateError, so a template
that this renderer accepts uses only constructs whose Go semantics are reproduced here.

Subset: ``{{ pipeline }}``, ``{{-``/``-}}`` trimming, ``{{/* comments */}}``, ``if``/``else if``/
``else``, ``range`` (with ``$v :=`` or ``$k, $v :=``), ``with``, ``define``, ``$var :=``, pipes
and parentheses; functions: include, toYaml, nindent, indent, quote, default, required, fail, printf
(%s %d %v), eq, ne, lt, gt, and, or, not, int, toString, b64enc, trunc, trimSuffix, contains,
list, dict, hasKey, empty, join, index; methods of the context's objects (Helm's ``.Files.Get``):
a field chain that ends in a callable is called, with the command's other operands and the piped
value last when it heads a command, with none when it is an argument, as Go calls methods.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tests.deploy.gotemplate_funcs import FUNCS, TemplateError, go_str, helm_values, truthy

__all__ = ["Renderer", "TemplateError", "helm_values", "parse"]


# ---- lexing and parsing -------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+(?:\.\d+)?)|
    (?P<decl>:=)|(?P<pipe>\|)|(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|
    (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)|
    (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def _tokens(src: str) -> list[tuple[str, str]]:
    out, i = [], 0
    src = src.strip()
    while i < len(src):
        m = _TOKEN.match(src, i)
        if not m or m.end() == i:
            raise TemplateError(f"cannot parse {src[i:]!r} in {{{{ {src} }}}}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        i = m.end()
        while i < len(src) and src[i].isspace():
            i += 1
    return out


@dataclass
class Node:
    kind: str  # text | action | if | range | with | define
    text: str = ""
    pipe: list[tuple[str, str]] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    other: list[Node] = field(default_factory=list)  # else branch
    name: str = ""


def _split(src: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with trim markers applied."""
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        parts.append(("text", text))
        parts.append(("action", m.group(2).strip()))
        pos = m.end()
        if m.group(3):
            while pos < len(src) and src[pos].isspace():
                pos += 1
    parts.append(("text", src[pos:]))
    return [p for p in parts if p != ("text", "")]


def parse(src: str, defines: dict[str, list[Node]]) -> list[Node]:
    parts = _split(src)
    stack: list[tuple[Node, list[Node]]] = []  # (block, list being filled)
    root: list[Node] = []
    cur = root
    for kind, s in parts:
        if kind == "text":
            cur.append(Node("text", text=s))
            continue
        if s.startswith("/*"):
            if not s.endswith("*/"):
                raise TemplateError(f"unclosed comment {s!r}")
            continue
        word, _, rest = s.partition(" ")
        if word in ("if", "range", "with", "define"):
            node = Node(word)
            if word == "define":
                node.name = json.loads(rest.strip())
            else:
                node.pipe = _tokens(rest)
            cur.append(node)
            stack.append((node, cur))
            cur = node.body
        elif word == "else":
            if not stack:
                raise TemplateError("else outside a block")
            node, parent = stack[-1]
            rest = rest.strip()
            if rest.startswith("if "):  # else if: a nested if inside the else branch
                inner = Node("if", pipe=_tokens(rest[3:]))
                node.other = [inner]
                stack[-1] = (node, parent)
                stack.append((inner, node.other))
                inner.name = "elseif"
                cur = inner.body
            else:
                cur = node.other
        elif word == "end":
            if not stack:
                raise TemplateError("end without a block")
            node, parent = stack.pop()
            while node.name == "elseif":  # close the chain of else-ifs
                node, parent = stack.pop()
            if node.kind == "define":
                parent.remove(node)
                defines[node.name] = node.body
            cur = parent
        elif word in ("template", "block", "break", "continue"):
            raise TemplateError(f"{word} is outside the supported subset (use include)")
        else:
            cur.append(Node("action", pipe=_tokens(s)))
    if stack:
        raise TemplateError(f"unclosed {stack[-1][0].kind}")
    return root


# ---- evaluation ---------------------------------------------------------------------------------


class Renderer:
    def __init__(self) -> None:
        self.defines: dict[str, list[Node]] = {}

    def add(self, src: str) -> list[Node]:
        return parse(src, self.defines)

    def render(self, nodes: list[Node], dot: Any, root: Any) -> str:
        return self._block(nodes, dot, {"$": root})

    def include(self, name: str, dot: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"include: no template {name!r}")
        return self._block(self.defines[name], dot, {"$": dot})

    def _block(self, nodes: list[Node], dot: Any, scope: dict[str, Any]) -> str:
        scope = dict(scope)
        out: list[str] = []
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "action":
                v = self._pipeline(n.pipe, dot, scope, assign=True)
                if v is not _ASSIGNED:
                    out.append(go_str(v))
            elif n.kind == "if":
                branch = n.body if truthy(self._pipeline(n.pipe, dot, scope)) else n.other
                out.append(self._block(branch, dot, scope))
            elif n.kind == "with":
                v = self._pipeline(n.pipe, dot, scope)
                out.append(self._block(n.body, v, scope) if truthy(v) else
                           self._block(n.other, dot, scope))  # fmt: skip
            elif n.kind == "range":
                out.append(self._range(n, dot, scope))
        return "".join(out)

    def _range(self, n: Node, dot: Any, scope: dict[str, Any]) -> str:
        toks = n.pipe
        names: list[str] = []
        if any(k == "decl" for k, _ in toks):
            i = next(i for i, (k, _) in enumerate(toks) if k == "decl")
            names = [v for k, v in toks[:i] if k == "var"]
            toks = toks[i + 1 :]
        seq = self._pipeline(toks, dot, scope)
        if seq is None:
            seq = []
        items = sorted(seq.items()) if isinstance(seq, dict) else list(enumerate(seq))
        if not isinstance(seq, (dict, list)):
            raise TemplateError(f"range over {seq!r}")
        if not items:
            return self._block(n.other, dot, scope)
        out = []
        for key, value in items:
            inner = dict(scope)
            if len(names) == 1:
                inner[names[0]] = value
            elif len(names) == 2:
                inner[names[0]], inner[names[1]] = key, value
            out.append(self._block(n.body, value, inner))
        return "".join(out)

    def _pipeline(
        self, toks: list[tuple[str, str]], dot: Any, scope: dict[str, Any], assign: bool = False
    ) -> Any:
        if len(toks) >= 2 and toks[0][0] == "var" and toks[1][0] == "decl":
            if not assign:
                raise TemplateError("declarations only as their own action")
            scope[toks[0][1]] = self._pipeline(toks[2:], dot, scope)
            return _ASSIGNED
        value: Any = _NONE
        for cmd in _split_on(toks, "pipe"):
            value = self._command(cmd, dot, scope, value)
        return value

    def _command(
        self, toks: list[tuple[str, str]], dot: Any, scope: dict[str, Any], piped: Any
    ) -> Any:
        operands = _group_parens(toks)
        if not operands:
            raise TemplateError("empty command")
        head = operands[0]
        if (
            isinstance(head, tuple)
            and head[0] == "ident"
            and head[1] not in ("true", "false", "nil")
        ):
            args = [self._operand(o, dot, scope) for o in operands[1:]]
            if piped is not _NONE:
                args.append(piped)
            return self._call(head[1], args, dot)
        if isinstance(head, tuple) and head[0] in ("field", "var"):
            method = self._lookup(head[1], dot, scope)
            if callable(method):  # a method at the end of a chain (.Files.Get "x"), as Go calls it
                args = [self._operand(o, dot, scope) for o in operands[1:]]
                if piped is not _NONE:
                    args.append(piped)
                return _call_method(head[1], method, args)
        if len(operands) != 1 or piped is not _NONE:
            raise TemplateError(f"cannot call a non-function {head!r}")
        return self._operand(head, dot, scope)

    def _call(self, name: str, args: list[Any], dot: Any) -> Any:
        if name == "include":
            return self.include(args[0], args[1])
        if name in ("and", "or"):
            for a in args:
                if truthy(a) != (name == "and"):
                    return a
            return args[-1]
        if name not in FUNCS:
            raise TemplateError(f"function {name!r} is outside the supported subset")
        try:
            return FUNCS[name](*args)
        except TemplateError:
            raise
        except Exception as e:
            raise TemplateError(f"{name}{tuple(args)!r:.120}: {e}") from e

    def _operand(self, o: Any, dot: Any, scope: dict[str, Any]) -> Any:
        if isinstance(o, list):  # parenthesized pipeline
            return self._pipeline(o, dot, scope)
        kind, text = o
        if kind == "str":
            return json.loads(text)
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            return {"true": True, "false": False, "nil": None}[text]
        if kind in ("field", "var"):
            v = self._lookup(text, dot, scope)
            # a method as an argument: Go calls it with no arguments
            return _call_method(text, v, []) if callable(v) else v
        raise TemplateError(f"unexpected {text!r}")

    def _lookup(self, text: str, dot: Any, scope: dict[str, Any]) -> Any:
        """A field chain (.a.b) or a variable's ($v.a.b); a method at its end is not called."""
        if text.startswith("."):
            return dot if text == "." else _fields(dot, text.split(".")[1:], text)
        name, *path = text.split(".")
        if name not in scope:
            raise TemplateError(f"undefined variable {name}")
        return _fields(scope[name], path, text)


_NONE = object()
_ASSIGNED = object()


def _fields(v: Any, path: list[str], text: str) -> Any:
    for i, p in enumerate(path):
        if v is None:
            raise TemplateError(f"nil pointer evaluating {text}: {'.'.join(path[:i])} is missing")
        if not isinstance(v, dict):
            raise TemplateError(f"can't evaluate field {p} in {type(v).__name__} ({text})")
        v = v.get(p)
    return v


def _call_method(text: str, method: Any, args: list[Any]) -> Any:
    """Call a method of a value (Helm's .Files.Get): Go refuses a wrong number of arguments."""
    name = text.rsplit(".", 1)[-1]
    try:
        inspect.signature(method).bind(*args)
    except TypeError:
        want = len(inspect.signature(method).parameters)
        raise TemplateError(
            f"wrong number of args for {name}: want {want} got {len(args)}"
        ) from None
    return method(*args)


def _split_on(toks: list[tuple[str, str]], kind: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for t in toks:
        depth += (t[0] == "lp") - (t[0] == "rp")
        if t[0] == kind and depth == 0:
            out.append([])
        else:
            out[-1].append(t)
    return out


def _group_parens(toks: list[tuple[str, str]]) -> list[Any]:
    out: list[Any] = []
    i = 0
    while i < len(toks):
        if toks[i][0] == "lp":
            depth, j = 1, i + 1
            while depth:
                if j >= len(toks):
                    raise TemplateError("unbalanced parentheses")
                depth += (toks[j][0] == "lp") - (toks[j][0] == "rp")
                j += 1
            out.append(toks[i + 1 : j - 1])
            i = j
        elif toks[i][0] == "rp":
            raise TemplateError("unbalanced parentheses")
        else:
            out.append(toks[i])
            i += 1
    return out
