"""Hostile JSON documents and a Python oracle of what PostgreSQL can read of them.

PostgreSQL's `json` input accepts documents that `->`/`->>` then refuse, failing the whole
statement: a `\\u0000` escape or a lone surrogate escape anywhere, or nesting deeper than the
stack allows (sql/views/cj_health_json.sql). The oracle here decides, from the text alone,
whether a document is readable (True), unreadable (False), or depends on the server's stack
(None: deeply nested documents), and what `->>` returns for a value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Documents nested at most this deep are readable whatever max_stack_depth (100 kB, its
# minimum, reads about 700 levels): the view must read them, never flag them.
ALWAYS_READABLE_DEPTH = 200
# PostgreSQL's own limits with the default max_stack_depth (2 MB), measured (INSERT accepts /
# the old view read): PG16 objects 16,375 / 16,364, arrays 16,374 / 16,363; PG15 objects
# 13,100 / 13,090, arrays 14,554 / 14,543. Both read 10,000 levels through cj_health_json.
READABLE_DEPTH_AT_2MB = 10_000
NEAR_LIMITS = (13_085, 13_091, 13_100, 14_540, 14_550, 14_554, 16_360, 16_364, 16_370, 16_375)

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


@dataclass(frozen=True)
class Scan:
    depth: int  # deepest nesting of arrays/objects (0 for a scalar)
    bad_escape: bool  # a string (key or value) holds \u0000 or a lone surrogate


def scan(doc: str) -> Scan:
    """Depth and escapes of a JSON text without recursion (Python's json stops at ~1,000)."""
    depth = deepest = 0
    bad = False
    for match in _TOKENS.finditer(doc):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
        elif not bad and "\\u" in token:
            bad = _unreadable_string(json.loads(token))
    return Scan(deepest, bad)


def _unreadable_string(value: str) -> bool:
    # json.loads turns \u0000 into NUL, a pair of surrogate escapes into one character and a
    # lone one into a lone surrogate: exactly the strings PostgreSQL's lexer refuses.
    return any(ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def readable(doc: str | None, always_readable_depth: int = ALWAYS_READABLE_DEPTH) -> bool | None:
    """Whether ->/->> can read the document: True, False, or None when it depends on the
    server's stack (nested deeper than `always_readable_depth`). NULL is readable."""
    if doc is None:
        return True
    s = scan(doc)
    if s.bad_escape:
        return False
    return True if s.depth <= always_readable_depth else None


def pg_text(value: Any) -> str | None:
    """What `doc ->> key` returns for a JSON value written by json.dumps (default separators):
    a string as itself, null as NULL, anything else as its JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)


def deep(depth: int, kind: str = "[") -> str:
    """A document nested `depth` levels: arrays, or objects {"a": {"a": ... 1}}."""
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * (depth - 1) + '{"a":1' + "}" * depth


# One of each kind of fault, as the service's json.dumps (ensure_ascii=True) writes them.
HOSTILE_FRAGMENTS: dict[str, str] = {
    "nul": json.dumps("pasted\x00text"),
    "lone_high": json.dumps("\ud800"),
    "lone_low": json.dumps("x\udfff"),
    "high_then_other": '"\\ud83d\\u0041"',
    "nul_in_key": '{"\\u0000": 1}',
}
READABLE_FRAGMENTS: dict[str, str] = {
    "emoji_pair": json.dumps("\U0001f600"),  # "\ud83d\ude00": a valid pair
    "escaped_backslash": '"\\\\u0000"',  # a backslash, then the text u0000
    "rtl": json.dumps("\u202eevil"),
    "big_int": str(2**70),
    "deep_200": deep(ALWAYS_READABLE_DEPTH - 2),
}


def with_fragment(base: dict[str, Any], fragment: str, key: str = "note") -> str:
    """`base` serialized with the raw JSON text `fragment` as the value of `key`."""
    marker = "__fragment_marker__"
    text = json.dumps({**base, key: marker})
    return text.replace(json.dumps(marker), fragment)
