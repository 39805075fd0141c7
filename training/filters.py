"""Manifest filters: ``"sync.sync_c_mean >= 4"`` style conditions, parsed by a tiny grammar (never ``eval``).

Grammar: ``COLUMN OP VALUE`` where COLUMN is a manifest column (letters, digits, ``_``, ``.``, ``-``), OP one
of ``< <= > >= == !=`` and VALUE a number, ``true``/``false``, or a string (quoted with ' or ", or a bare
word). A row whose column is null or NaN fails every condition (an unmeasured stat never passes a
threshold). A bool column compares with true/false or 0/1 only, a number column with numbers only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_OPS = {"<": "less", "<=": "less_equal", ">": "greater", ">=": "greater_equal", "==": "equal", "!=": "not_equal"}
_RE = re.compile(r"""^\s*(?P<col>[A-Za-z_][A-Za-z0-9_.\-]*)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<val>.+?)\s*$""")
_NUM = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: Any

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value!r}"


def parse_value(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _NUM.match(text):
        return float(text) if any(c in text for c in ".eE") else int(text)
    if re.fullmatch(r"[A-Za-z0-9_.\-:/]+", text):
        return text
    raise FilterError(f"value {text!r}: expected a number, true/false, a quoted string or a bare word")


def parse_condition(text: str) -> Condition:
    m = _RE.match(text)
    if not m:
        raise FilterError(f"filter {text!r}: expected 'COLUMN OP VALUE' with OP one of {' '.join(_OPS)}, "
                          f"e.g. 'sync.sync_c_mean >= 4'")
    try:
        value = parse_value(m["val"])
    except FilterError as e:
        raise FilterError(f"filter {text!r}: {e}") from None
    return Condition(m["col"], m["op"], value)


def parse_filters(items: Iterable[str]) -> list[Condition]:
    return [parse_condition(s) for s in items]


def check_columns(conds: Sequence[Condition], schema: pa.Schema) -> None:
    """Fail early, naming the columns there are, when a filter names a column the manifest lacks or
    compares a column with a value of another kind."""
    names = set(schema.names)
    for c in conds:
        if c.column not in names:
            stats = sorted(n for n in names if "." in n)
            raise FilterError(f"filter '{c}': no manifest column {c.column!r}; columns: "
                              f"{', '.join(sorted(names - set(stats)))}; stats: {', '.join(stats)}")
        t = schema.field(c.column).type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t)
        if isinstance(c.value, bool):
            ok = pa.types.is_boolean(t)
        elif isinstance(c.value, (int, float)):
            # a bool column compares with 0 / 1 as with false / true; any other number would silently mean true
            ok = numeric or (pa.types.is_boolean(t) and c.value in (0, 1))
        else:
            ok = pa.types.is_string(t) or pa.types.is_large_string(t)
        if not ok:
            raise FilterError(f"filter '{c}': column {c.column!r} is {t}, cannot compare with {c.value!r}")
        if c.op in ("<", "<=", ">", ">=") and pa.types.is_boolean(t):
            raise FilterError(f"filter '{c}': ordering a bool column; use == or !=")


def passing_keys(table: pa.Table, conds: Sequence[Condition]) -> set[str]:
    """Keys of the kept rows of a manifest table that meet every condition."""
    mask = pc.equal(table["status"], "kept")
    for c in conds:
        col = table[c.column]
        value = c.value
        if pa.types.is_boolean(col.type) and not isinstance(value, bool):
            value = bool(value)
        cmp = pc.fill_null(getattr(pc, _OPS[c.op])(col, pa.scalar(value)), False)
        if pa.types.is_floating(col.type):  # NaN is how stages record a stat they could not measure
            cmp = pc.and_(cmp, pc.invert(pc.fill_null(pc.is_nan(col), False)))
        mask = pc.and_(mask, cmp)
    return set(table.filter(mask)["key"].to_pylist())
