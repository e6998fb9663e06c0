"""How a parameter's value is written on the wire, per OpenAPI's `style` and `explode` (RFC 6570's expansions).

Path values are percent-encoded item by item, the delimiters between them kept (`.blue.black`, `;id=3;id=4`),
so no value can change the path's shape. Header values go as written (`blue,black,brown`); cookie values are
percent-encoded like path values, each cookie `name=value`. The names are `bus_schemas.plans.ParamStyle`'s (path,
header, cookie) and `QueryStyle`'s (query), an absent style being the default: `simple` for path and header values,
`form` (exploded) for query parameters and cookies. Query pairs come percent-encoded, item by item, with their
delimiters kept (`type=album,track`; a comma inside an item is `%2C`), as the query string is sent.

Every case matches the style table of the OpenAPI Specification 3.1.1 (`tests/runner_template/test_styles.py`
checks them all): with `color` = "blue", ["blue", "black", "brown"] and {"R": 100, "G": 200, "B": 150},

    simple           blue    blue,black,brown                R,100,G,200,B,150
    simple_exploded  blue    blue,black,brown                R=100,G=200,B=150
    label            .blue   .blue,black,brown               .R,100,G,200,B,150
    label_exploded   .blue   .blue.black.brown               .R=100.G=200.B=150
    matrix           ;color=blue  ;color=blue,black,brown    ;color=R,100,G,200,B,150
    matrix_exploded  ;color=blue  ;color=blue;color=black;color=brown   ;R=100;G=200;B=150

(3.0.3's table wrote unexploded labels with dots; 3.1.1 corrected it to RFC 6570's commas, followed here.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

_JOINERS = {"form_joined": ",", "space_delimited": "%20", "pipe_delimited": "%7C"}
QUERY_STYLES = frozenset({"form", "deep_object", *_JOINERS})
PATH_STYLES = frozenset({"simple", "simple_exploded", "label", "label_exploded", "matrix", "matrix_exploded"})
HEADER_STYLES = frozenset({"simple", "simple_exploded"})
COOKIE_STYLES = frozenset({"form", "form_joined"})


def text(value: Any) -> str:
    """One atomic value as text: JSON's spelling for booleans, JSON itself for a nested object or array."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _encoded(value: Any) -> str:
    return quote(text(value), safe="")


def _items(value: Any) -> list[tuple[str | None, Any]]:
    """A value's parts: (None, item) for a scalar or each array item, (key, value) for each field of an object;
    None items and fields are left out."""
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items() if v is not None]
    if isinstance(value, list | tuple):
        return [(None, item) for item in value if item is not None]
    return [(None, value)]


def _expand(name: str, value: Any, *, prefix: str, named: bool, exploded: bool, encode: Callable[[Any], str]) -> str:
    """RFC 6570 expansion of one variable with operator `prefix` (`` simple, `.` label, `;` matrix)."""
    parts = _items(value)
    is_object = isinstance(value, Mapping)
    if exploded:
        separator = prefix or ","
        if is_object:
            written = [f"{encode(k)}={encode(v)}" for k, v in parts]
        else:
            written = [f"{name}={encode(v)}" if named else encode(v) for _, v in parts]
        return prefix + separator.join(written)
    flat = [encode(piece) for k, v in parts for piece in ((k, v) if k is not None else (v,))]
    joined = ",".join(flat)
    if named:
        return f"{prefix}{name}={joined}" if joined else f"{prefix}{name}"
    return prefix + joined


def path_value(name: str, value: Any, style: str = "simple") -> str:
    """What replaces `{name}` in a path for `value` written in `style` (percent-encoded)."""
    if style not in PATH_STYLES:
        raise ValueError(f"unknown path style {style!r}")
    base, _, exploded = style.partition("_")
    prefix = {"simple": "", "label": ".", "matrix": ";"}[base]
    return _expand(name, value, prefix=prefix, named=base == "matrix", exploded=bool(exploded), encode=_encoded)


def header_value(value: Any, style: str = "simple") -> str:
    """A header's value for `value` written in `style` (not percent-encoded: a header is not a URL)."""
    if style not in HEADER_STYLES:
        raise ValueError(f"unknown header style {style!r}")
    return _expand("", value, prefix="", named=False, exploded=style == "simple_exploded", encode=text)


def cookie_pairs(name: str, value: Any, style: str = "form") -> list[tuple[str, str]]:
    """The cookies (name, percent-encoded value) for a cookie parameter written in `style`."""
    if style not in COOKIE_STYLES:
        raise ValueError(f"unknown cookie style {style!r}")
    parts = _items(value)
    if style == "form_joined" or not isinstance(value, Mapping | list | tuple):
        flat = [_encoded(piece) for k, v in parts for piece in ((k, v) if k is not None else (v,))]
        return [(name, ",".join(flat))]
    if isinstance(value, Mapping):
        return [(k, _encoded(v)) for k, v in parts if k is not None]
    return [(name, _encoded(v)) for _, v in parts]


def cookie_header(cookies: Mapping[str, Any], styles: Mapping[str, str] | None = None) -> str | None:
    """The `Cookie` header for cookie parameters (None values left out), or None when there is none."""
    pairs = [pair for name, value in cookies.items() if value is not None
             for pair in cookie_pairs(name, value, (styles or {}).get(name, "form"))]
    return "; ".join(f"{k}={v}" for k, v in pairs) or None


def form_body(fields: Mapping[str, Any], styles: Mapping[str, str] | None = None) -> str:
    """An `application/x-www-form-urlencoded` body: an array repeats its field (OpenAPI's form default) or is
    joined as its style says (items encoded, the delimiters kept), an object goes as its JSON (the default
    content type of an object part) or as `name[field]` fields (`deep_object`); None is left out."""
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        style = (styles or {}).get(name, "form")
        if style not in QUERY_STYLES:
            raise ValueError(f"unknown form field style {style!r}")
        if isinstance(value, Mapping) and style == "deep_object":
            pairs.extend((quote_plus(f"{name}[{k}]"), quote_plus(text(v))) for k, v in _items(value))
        elif isinstance(value, list | tuple) and style in _JOINERS:
            pairs.append((quote_plus(name), _JOINERS[style].join(quote_plus(text(v)) for _, v in _items(value))))
        elif isinstance(value, list | tuple):
            pairs.extend((quote_plus(name), quote_plus(text(v))) for _, v in _items(value))
        elif value is not None:
            pairs.append((quote_plus(name), quote_plus(text(value))))
    return "&".join(f"{k}={v}" for k, v in pairs)


def query_pairs(values: Mapping[str, Any] | None, styles: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Query pairs, percent-encoded, each parameter written in its style (`form` repeats an array's name per item
    and spreads an object's fields; the delimited styles join; `deep_object` writes `name[field]`); None is left
    out."""
    pairs: list[tuple[str, str]] = []
    for name, value in (values or {}).items():
        if value is None:
            continue
        style = (styles or {}).get(name, "form")
        if style not in QUERY_STYLES:
            raise ValueError(f"unknown query style {style!r}")
        parts = _items(value)
        if isinstance(value, Mapping) and style == "deep_object":
            pairs.extend((_encoded(f"{name}[{k}]"), _encoded(v)) for k, v in parts)
        elif style in _JOINERS and isinstance(value, Mapping | list | tuple):
            flat = [_encoded(piece) for k, v in parts for piece in ((k, v) if k is not None else (v,))]
            pairs.append((_encoded(name), _JOINERS[style].join(flat)))
        elif isinstance(value, Mapping):
            pairs.extend((_encoded(k), _encoded(v)) for k, v in parts)
        else:
            pairs.extend((_encoded(name), _encoded(v)) for _, v in parts)
    return pairs
