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
list, dict, hasKey, empty, join, index.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml


class TemplateError(Exception):
    pass


# ---- values as Helm sees them -------------------------------------------------------------------


def helm_values(obj: Any) -> Any:
    """Numbers from YAML become float64, as Helm's values do."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return float(obj)
    if isinstance(obj, dict):
        return {k: helm_values(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [helm_values(v) for v in obj]
    return obj


def go_format_float(f: float) -> str:
    """fmt's %v of a float64: strconv's 'g' with the shortest digits, which switches to the
    exponent form when the exponent is < -4 or >= 6 (so 8388608 prints as 8.388608e+06)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "0"
    m = re.fullmatch(r"(-?)(\d+)(?:\.(\d+))?(?:e([+-]\d+))?", repr(f))
    if m is None:
        raise TemplateError(f"cannot format {f!r}")
    sign, ip, fp, e = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    digits = ip + fp
    exp10 = int(e or 0) + len(ip) - 1
    lead = len(digits) - len(digits.lstrip("0"))
    digits, exp10 = digits.lstrip("0").rstrip("0") or "0", exp10 - lead
    if exp10 < -4 or exp10 >= 6:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"
    if exp10 >= 0:
        whole, frac = digits[: exp10 + 1].ljust(exp10 + 1, "0"), digits[exp10 + 1 :]
    else:
        whole, frac = "0", "0" * (-exp10 - 1) + digits
    return sign + whole + ("." + frac if frac else "")


def go_str(v: Any) -> str:
    if v is None:
        return ""  # Helm replaces "<no value>" with ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_format_float(v)
    if isinstance(v, (dict, list)):
        raise TemplateError(f"printing a {type(v).__name__} bare: use toYaml ({v!r:.60})")
    return str(v)


def truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def _plain(v: Any) -> Any:
    """For toYaml: integral floats back to ints, as sigs.k8s.io/yaml's JSON step writes them."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def to_yaml(v: Any) -> str:
    if v is None:
        return "null"
    return yaml.safe_dump(_plain(v), default_flow_style=False, sort_keys=True).rstrip("\n")


def _printf(fmt: str, *args: Any) -> str:
    out, i = [], 0
    for m in re.finditer(r"%([sdvq%])", fmt):
        out.append(fmt[i : m.start()])
        i = m.end()
        verb = m.group(1)
        if verb == "%":
            out.append("%")
            continue
        if not args:
            raise TemplateError(f"printf {fmt!r}: too few arguments")
        a, args = args[0], args[1:]
        if verb == "d":
            if not isinstance(a, int) or isinstance(a, bool):
                raise TemplateError(f"printf %d of {a!r}: Go prints %!d(float64=...)")
            out.append(str(a))
        elif verb == "q":
            out.append(json.dumps(go_str(a)))
        else:
            out.append(go_str(a))
    out.append(fmt[i:])
    return "".join(out)


def _cmp(a: Any, b: Any) -> tuple[Any, Any]:
    # Go's eq/lt compare within one basic kind: a template's 1 (int) against a value's 1
    # (float64) is "incompatible types for comparison" in Helm, so here too.
    if type(a) is not type(b) and not (a is None or b is None):
        raise TemplateError(f"incompatible types for comparison: {a!r}, {b!r}")
    return a, b


def _eq(a: Any, *bs: Any) -> bool:
    return any(x == y for b in bs for x, y in [_cmp(a, b)])


def _required(msg: str, v: Any) -> Any:
    if v is None or v == "":
        raise TemplateError(f"required: {msg}")
    return v


def _fail(msg: str) -> None:
    raise TemplateError(f"fail: {msg}")


def _int(v: Any) -> int:
    if isinstance(v, str):
        return int(float(v)) if v.strip() else 0
    return int(v or 0)


FUNCS: dict[str, Any] = {
    "toYaml": to_yaml,
    "nindent": lambda n, s: "\n" + "\n".join(" " * int(n) + ln for ln in str(s).split("\n")),
    "indent": lambda n, s: "\n".join(" " * int(n) + ln for ln in str(s).split("\n")),
    "quote": lambda *vs: " ".join(json.dumps(go_str(v)) for v in vs if v is not None),
    "default": lambda d, v=None: v if truthy(v) else d,
    "required": _required,
    "fail": _fail,
    "printf": _printf,
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": lambda a, b: (lambda x, y: x < y)(*_cmp(a, b)),
    "gt": lambda a, b: (lambda x, y: x > y)(*_cmp(a, b)),
    "not": lambda v: not truthy(v),
    "int": _int,
    "toString": go_str,
    "b64enc": lambda s: base64.b64encode(go_str(s).encode()).decode(),
    "trunc": lambda n, s: s[: int(n)],
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "contains": lambda sub, s: sub in s,
    "list": lambda *vs: list(vs),
    "dict": lambda *kv: {str(kv[i]): kv[i + 1] for i in range(0, len(kv), 2)},
    "hasKey": lambda d, k: k in d,
    "empty": lambda v: not truthy(v),
    "join": lambda sep, vs: sep.join(go_str(v) for v in vs),
    "index": lambda d, *keys: _index(d, keys),
}


def _index(d: Any, keys: tuple[Any, ...]) -> Any:
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)  # a missing key is the zero value, as Go's index of a map
        elif isinstance(d, list):
            d = d[int(k)]
        else:
            raise TemplateError(f"index of {type(d).__name__}")
    return d


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
        if kind == "field":
            return dot if text == "." else _fields(dot, text.split(".")[1:], text)
        if kind == "var":
            name, *path = text.split(".")
            if name not in scope:
                raise TemplateError(f"undefined variable {name}")
            return _fields(scope[name], path, text)
        raise TemplateError(f"unexpected {text!r}")


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
