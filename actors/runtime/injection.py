"""Prompt-injection markers in text that will reach a model as tool descriptions or results.

Descriptions in an OpenAPI document or a tool spec end up in every MCP client's context, so text that
speaks to the model ("ignore previous instructions", fake system tags, hidden Unicode tag characters)
is flagged: by the planner on the inputs (the plan proceeds) and by the checker on the generated module
(the build fails). One list serves both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

_PHRASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (label, re.compile(pattern, re.IGNORECASE))
    for label, pattern in (
        ("asks to ignore earlier instructions",
         r"\b(ignore|disregard|forget|override)\s+(all\s+|any\s+)?(the\s+|your\s+)?"
         r"(previous|prior|above|earlier|preceding|system)\s+(instructions|prompts?|messages|rules|context)"),
        ("mentions the system prompt", r"\bsystem\s+prompt\b"),
        ("imitates a chat-format control tag",
         r"<\|?\s*/?\s*(system|im_start|im_end|assistant|instructions|endoftext)\s*\|?>|\[/?inst\]|<</?sys>>"),
        ("announces new instructions", r"\bnew\s+instructions\s*:"),
        ("directs the model to call a tool",
         r"\b(you\s+must|always|first|immediately|silently)\s+(call|invoke|run|use|execute)\s+(the\s+)?"
         r"[`'\"]?[\w.-]+[`'\"]?\s+(tool|function)\b"),
        ("directs the model to call a tool", r"<\s*/?\s*(tool_call|function_call|tool_use|antml:[a-z_]+)\b"),
        ("tells the model to hide something from the user",
         r"\b(do\s+not|don't|never)\s+(tell|inform|mention\s+(this\s+)?to|show)\s+(the\s+)?user\b"),
        ("claims a new role for the model", r"\byou\s+are\s+now\s+(a|an|in|the)\b"),
    )
)

# Unicode tag characters (invisible, read by models), bidi overrides and zero-width characters.
_HIDDEN = re.compile("[\U000e0000-\U000e007f\u202a-\u202e\u2066-\u2069\u200b-\u200f\u2060-\u2064]")


def _fold(text: str) -> str:
    # Look-alike characters (fullwidth, ligatures) and odd spacing must not slip a phrase past the patterns.
    return " ".join(unicodedata.normalize("NFKC", text).split())


def injection_phrases(text: str) -> list[str]:
    """The labels of the phrases in `text` that speak to a model (hidden characters aside)."""
    folded = _fold(text)
    return list(dict.fromkeys(label for label, pattern in _PHRASES if pattern.search(folded)))


def injection_markers(text: str) -> list[str]:
    """What in `text` looks like an instruction to a model, one short reason each."""
    found: list[str] = []
    folded = _fold(text)
    for label, pattern in _PHRASES:
        match = pattern.search(folded)
        if match and not any(f.startswith(label) for f in found):
            found.append(f"{label} ({match.group(0)[:60]!r})")
    hidden = _HIDDEN.findall(text)
    if hidden:
        found.append(f"contains {len(hidden)} hidden Unicode character(s) (e.g. U+{ord(hidden[0]):04X})")
    return found


def walk_strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON-like value with its dotted path (keys included: they are text too)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, str(key)
            yield from walk_strings(item, child)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{path}[{index}]")


def scan(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(where, reason) for every injection marker in a JSON-like value."""
    hits: list[tuple[str, str]] = []
    for where, text in walk_strings(value, path):
        hits.extend((where, reason) for reason in injection_markers(text))
    return hits
