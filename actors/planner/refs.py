"""Local `$ref`s of an API document (OpenAPI 3 and Swagger 2.0 alike)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote


def resolve_ref(doc: Any, ref: str) -> Any:
    """The node a local `$ref` (`#/a/b~1c/0`: a JSON Pointer after the `#`, percent-encoded) points at in `doc`;
    LookupError when it points at nothing."""
    node = doc
    pointer = ref[1:]
    for raw in pointer.split("/")[1:] if pointer else []:
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise LookupError(ref)
    return node
