"""The values and functions of the Go-template subset ``gotemplate.py`` renders: numbers as Helm's
float64 values, Go's printing of them (``%v``), truthiness, and Helm's functions (``FUNCS``)."""

from __future__ import annotations

import base64
import json
import math
import re
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
