"""``mtcc select OUT --where EXPR``: a filter over a manifest that is parsed and type-checked, never executed.

Contract: ``parse_where(text, schema)`` checks EXPR against a manifest schema and returns a ``Where`` whose
``mask(table)`` gives one bool per row (True: selected), computed column-wise with ``pyarrow.compute``. Any
problem is a ``WhereError`` that quotes EXPR, names the offending part and says how to fix it.

The expression is read with ``ast.parse(mode="eval")`` and only the following is accepted; everything else
(other calls, subscripts, lambdas, attribute access, comprehensions, ``:=``, f-strings, ``**``, ...) is
refused by name, so a config or a command line can select rows but never run code:

- columns: bare (``status``) or dotted (``picture.sharpness``) names, or ``col("any name")``;
- constants: numbers, strings, ``True``, ``False``, ``None``;
- comparisons ``< <= > >= == !=``, chained as in Python (``0.2 < picture.sharpness <= 0.9``);
- ``x in (c1, c2)`` / ``x not in [...]`` against constants; ``x is None`` / ``x is not None``;
- ``and``, ``or``, ``not``; ``+ - * /`` and unary minus on numbers; ``abs(x)``, ``min(a, b, ...)``,
  ``max(a, b, ...)``.

Types are checked at parse time: numbers (every integer and float column) compare with numbers, strings
with strings, bool columns with ``True``/``False`` (``==``/``!=`` only, or used bare as a condition);
``and``/``or``/``not`` take conditions only, and the whole expression must be a condition.

Missing values follow SQL's three-valued logic. A null (a NaN in a float column counts as null) makes
every comparison, ``in``, arithmetic and ``abs``/``min``/``max`` it enters unknown; ``not`` of unknown is
unknown; ``False and unknown`` is False and ``True or unknown`` is True; a row whose result is unknown is
not selected. So ``x > 0.5`` and ``not (x > 0.5)`` both skip a row without ``x``; to keep it, say so:
``x is None or x <= 0.5``. ``is None`` / ``is not None`` are never unknown. Division by zero is unknown.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_LENGTH = 2000
# deep enough for any filter a person writes; keeps the recursive checker far from Python's stack limit
MAX_DEPTH = 100
FUNCTIONS = ("abs", "min", "max", "col")
LIST_COLUMNS = ("the stat columns are in the histogram table of `mtcc report OUT`, and every column is in a "
                "manifest's schema: pyarrow.parquet.read_schema('OUT/manifests/000000.parquet')")

NUMBER, STRING, BOOL, NULL = "number", "string", "bool", "null"
_ARROW = {NUMBER: pa.float64(), STRING: pa.string(), BOOL: pa.bool_(), NULL: pa.null()}

Value = Union[pa.Array, pa.Scalar]


class WhereError(ValueError):
    """A --where expression that cannot be used; the message quotes it, names the bad part and the fix."""


# --- the checked expression tree: each node knows its type and evaluates over the loaded columns -----------

@dataclass(frozen=True)
class _Node:
    kind: str

    def run(self, cols: dict[str, pa.Array]) -> Value:
        raise NotImplementedError


@dataclass(frozen=True)
class _Column(_Node):
    name: str

    def run(self, cols: dict[str, pa.Array]) -> Value:
        return cols[self.name]


@dataclass(frozen=True)
class _Const(_Node):
    value: object

    def run(self, cols: dict[str, pa.Array]) -> Value:
        return pa.scalar(self.value, _ARROW[self.kind])


_COMPARE = {ast.Eq: (pc.equal, "=="), ast.NotEq: (pc.not_equal, "!="), ast.Lt: (pc.less, "<"),
            ast.LtE: (pc.less_equal, "<="), ast.Gt: (pc.greater, ">"), ast.GtE: (pc.greater_equal, ">=")}
_ARITH = {ast.Add: (pc.add, "+"), ast.Sub: (pc.subtract, "-"), ast.Mult: (pc.multiply, "*"),
          ast.Div: (pc.divide, "/")}


@dataclass(frozen=True)
class _Compare(_Node):
    fn: Callable[..., Value]
    left: _Node
    right: _Node

    def run(self, cols: dict[str, pa.Array]) -> Value:
        return self.fn(self.left.run(cols), self.right.run(cols))


@dataclass(frozen=True)
class _IsNull(_Node):
    arg: _Node
    negate: bool

    def run(self, cols: dict[str, pa.Array]) -> Value:
        out = pc.is_null(self.arg.run(cols))
        return pc.invert(out) if self.negate else out


@dataclass(frozen=True)
class _In(_Node):
    arg: _Node
    values: tuple[object, ...]
    negate: bool

    def run(self, cols: dict[str, pa.Array]) -> Value:
        x = self.arg.run(cols)
        found = pc.is_in(x, value_set=pa.array(self.values, type=x.type))
        # is_in answers False for a null row; three-valued logic wants unknown there
        out = pc.if_else(pc.is_null(x), pa.scalar(None, pa.bool_()), found)
        return pc.invert(out) if self.negate else out


@dataclass(frozen=True)
class _Not(_Node):
    arg: _Node

    def run(self, cols: dict[str, pa.Array]) -> Value:
        return pc.invert(self.arg.run(cols))


@dataclass(frozen=True)
class _Logic(_Node):
    fn: Callable[..., Value]
    args: tuple[_Node, ...]

    def run(self, cols: dict[str, pa.Array]) -> Value:
        out = self.args[0].run(cols)
        for a in self.args[1:]:
            out = self.fn(out, a.run(cols))
        return out


def _nan_to_null(x: Value) -> Value:
    # NaN compares unlike null (NaN != 1 is True), so it is folded into null to keep one notion of missing
    return pc.if_else(pc.is_nan(x), pa.scalar(None, pa.float64()), x)


@dataclass(frozen=True)
class _Arith(_Node):
    fn: Callable[..., Value]
    left: _Node
    right: _Node

    def run(self, cols: dict[str, pa.Array]) -> Value:
        a, b = self.left.run(cols), self.right.run(cols)
        if self.fn is pc.divide:
            b = pc.if_else(pc.equal(b, 0.0), pa.scalar(None, pa.float64()), b)
        return _nan_to_null(self.fn(a, b))


@dataclass(frozen=True)
class _Func(_Node):
    name: str
    args: tuple[_Node, ...]

    def run(self, cols: dict[str, pa.Array]) -> Value:
        vals = [a.run(cols) for a in self.args]
        if self.name == "neg":
            return pc.negate(vals[0])
        if self.name == "abs":
            return pc.abs(vals[0])
        fn = pc.min_element_wise if self.name == "min" else pc.max_element_wise
        # skip_nulls=False: a missing argument makes the result unknown, like every other operation here
        return fn(*vals, skip_nulls=False)


# --- columns: which Arrow types a filter can read, and how they are normalised --------------------------------

def _column_kind(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return BOOL
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return NUMBER
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return STRING
    if pa.types.is_null(t):
        return NULL
    return None


def _refusal(name: str, t: pa.DataType) -> str:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        what = "a list column"
    elif pa.types.is_struct(t) or pa.types.is_map(t):
        what = "a nested (struct/map) column"
    else:
        what = f"a column of type {t}"
    return f"`{name}` is {what}, and a filter compares one number, string or bool per row"


def _load(column: pa.ChunkedArray, kind: str) -> pa.Array:
    arr = column.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if kind == NUMBER:
        # one numeric type, so arithmetic never overflows an int32 and every constant compares alike
        return _nan_to_null(pc.cast(arr, pa.float64()))
    if kind == STRING and not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pc.cast(arr, pa.string())
    return arr


# --- the checker: Python AST -> typed tree, or a WhereError -------------------------------------------------

_REFUSED = {
    "Lambda": "a lambda", "Subscript": "a subscript (x[...])", "Slice": "a slice", "ListComp": "a comprehension",
    "SetComp": "a comprehension", "DictComp": "a comprehension", "GeneratorExp": "a generator expression",
    "NamedExpr": "an assignment expression (:=)", "JoinedStr": "an f-string", "FormattedValue": "an f-string",
    "IfExp": "a conditional expression (a if c else b)", "Dict": "a dict", "Await": "await", "Yield": "yield",
    "YieldFrom": "yield", "Starred": "a starred argument (*x)", "List": "a list outside `in [...]`",
    "Tuple": "a tuple outside `in (...)`", "Set": "a set outside `in {...}`",
}
_REFUSED_OPS = {"Pow": "`**`", "FloorDiv": "`//`", "Mod": "`%`", "MatMult": "`@`", "LShift": "`<<`",
                "RShift": "`>>`", "BitOr": "`|` (use `or`)", "BitAnd": "`&` (use `and`)", "BitXor": "`^`",
                "Invert": "`~` (use `not`)"}
_KIND_WORD = {NUMBER: "a number", STRING: "a string", BOOL: "a bool (True/False)", NULL: "None"}


def _shown(text: str) -> str:
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _depth(tree: ast.AST) -> int:
    # iterative: the tree may be deeper than the stack the recursive checker is allowed to use
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


class _Checker:
    def __init__(self, text: str, src: str, schema: pa.Schema) -> None:
        self.text, self.src, self.schema = text, src, schema
        self.used: dict[str, str] = {}

    def error(self, problem: str, fix: str) -> WhereError:
        return WhereError(f"--where {_shown(self.text)}: {problem}. {_cap(fix)}")

    def seg(self, node: ast.AST) -> str:
        part = ast.get_source_segment(self.src, node) or type(node).__name__
        return part if len(part) <= 80 else part[:77] + "..."

    # columns

    def column(self, name: str, node: ast.AST) -> _Column:
        idx = self.schema.get_all_field_indices(name)
        if not idx:
            part = self.seg(node)
            raise self.error(f"no column `{name}`" + (f" (in `{part}`)" if part != name else ""), self.suggest(name))
        if len(idx) > 1:
            raise self.error(f"column `{name}` appears {len(idx)} times in the manifest schema",
                             "rename or drop the duplicates before selecting")
        t = self.schema.field(idx[0]).type
        kind = _column_kind(t)
        if kind is None:
            raise self.error(_refusal(name, t), "pick a scalar stat instead; " + LIST_COLUMNS)
        self.used[name] = kind
        return _Column(kind, name)

    def suggest(self, name: str) -> str:
        names = self.schema.names
        tail = name.rsplit(".", 1)[-1]
        # a stat written without its stage (`sharpness`) is the commonest slip, and difflib scores it low
        near = [n for n in names if n.rsplit(".", 1)[-1] == tail and n != name]
        near += [n for n in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if n not in near]
        hint = f"did you mean {', '.join(f'`{n}`' for n in near[:3])}? " if near else ""
        return f"{hint}{_cap(LIST_COLUMNS)}; a name that is not a Python identifier is written col(\"name\")"

    def dotted(self, node: ast.Attribute) -> _Node:
        parts: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            raise self.error(f"attribute access `.{parts[-1]}` on `{self.seg(base)}` is not allowed",
                             "dotted names only name columns, e.g. picture.sharpness")
        parts.append(base.id)
        parts.reverse()
        # a real column followed by more attributes is attribute access on a value, not a longer name
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix in self.schema.names and ".".join(parts) not in self.schema.names:
                raise self.error(f"attribute access `.{parts[i]}` on column `{prefix}` is not allowed",
                                 "dotted names only name columns")
        return self.column(".".join(parts), node)

    # expressions

    def check(self, node: ast.AST) -> _Node:
        if isinstance(node, ast.Expression):
            return self.check(node.body)
        if isinstance(node, ast.Name):
            return self.column(node.id, node)
        if isinstance(node, ast.Attribute):
            return self.dotted(node)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            args = tuple(self.condition(v, f"each side of `{word}`") for v in node.values)
            return _Logic(BOOL, pc.and_kleene if word == "and" else pc.or_kleene, args)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        what = _REFUSED.get(type(node).__name__, f"`{type(node).__name__}`")
        raise self.error(f"{what} is not allowed: `{self.seg(node)}`", self.grammar())

    def grammar(self) -> str:
        return ("a filter is made of columns, constants, comparisons (< <= > >= == !=, in, is None), "
                "and/or/not, + - * /, abs(), min(), max() and col(\"name\")")

    def constant(self, node: ast.Constant) -> _Const:
        v = node.value
        if v is None:
            return _Const(NULL, None)
        if isinstance(v, bool):
            return _Const(BOOL, v)
        if isinstance(v, (int, float)):
            try:
                return _Const(NUMBER, float(v))
            except OverflowError:
                raise self.error(f"the number `{self.seg(node)}` is too large", "use a float such as 1e300")
        if isinstance(v, str):
            return _Const(STRING, v)
        what = {bytes: "a bytes literal", complex: "a complex number"}.get(type(v), f"`{self.seg(node)}`")
        raise self.error(f"{what} is not allowed: `{self.seg(node)}`", "constants are numbers, strings, "
                         "True, False and None")

    def condition(self, node: ast.AST, where: str) -> _Node:
        out = self.check(node)
        if out.kind != BOOL:
            raise self.error(f"{where} must be a condition, but `{self.seg(node)}` is {_KIND_WORD[out.kind]}",
                             f"Compare it, e.g. `{self.seg(node)} > 0`" if out.kind == NUMBER else
                             f"Compare it, e.g. `{self.seg(node)} == \"...\"`" if out.kind == STRING else
                             "Use `is None` / `is not None` to test for a missing value")
        return out

    def number(self, node: ast.AST, where: str) -> _Node:
        out = self.check(node)
        if out.kind != NUMBER:
            raise self.error(f"{where} works on numbers, but `{self.seg(node)}` is {_KIND_WORD[out.kind]}",
                             "arithmetic, abs, min and max take number columns and constants only")
        return out

    def unary(self, node: ast.UnaryOp) -> _Node:
        if isinstance(node.op, ast.Not):
            return _Not(BOOL, self.condition(node.operand, "what `not` negates"))
        if isinstance(node.op, ast.USub):
            return _Func(NUMBER, "neg", (self.number(node.operand, "unary `-`"),))
        if isinstance(node.op, ast.UAdd):
            return self.number(node.operand, "unary `+`")
        raise self.error(f"{_REFUSED_OPS[type(node.op).__name__]} is not allowed: `{self.seg(node)}`",
                         self.grammar())

    def binop(self, node: ast.BinOp) -> _Node:
        op = _ARITH.get(type(node.op))
        if op is None:
            raise self.error(f"{_REFUSED_OPS[type(node.op).__name__]} is not allowed: `{self.seg(node)}`",
                             "arithmetic is + - * / only")
        fn, sym = op
        return _Arith(NUMBER, fn, self.number(node.left, f"`{sym}`"), self.number(node.right, f"`{sym}`"))

    def call(self, node: ast.Call) -> _Node:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in FUNCTIONS:
            raise self.error(f"calling `{self.seg(node.func)}` is not allowed: `{self.seg(node)}`",
                             f"the only functions are {', '.join(f'{f}()' for f in FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.error(f"`{self.seg(node)}` passes keyword or starred arguments",
                             f"call {name}() with plain arguments")
        if name == "col":
            arg = node.args[0] if len(node.args) == 1 else None
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                raise self.error(f"`{self.seg(node)}` must name one column as a string",
                                 'write col("stage.stat name")')
            return self.column(arg.value, node)
        if name == "abs" and len(node.args) != 1:
            raise self.error(f"abs() takes one argument: `{self.seg(node)}`", "write abs(x)")
        if name != "abs" and len(node.args) < 2:
            raise self.error(f"{name}() takes two or more arguments: `{self.seg(node)}`", f"write {name}(a, b)")
        return _Func(NUMBER, name, tuple(self.number(a, f"{name}()") for a in node.args))

    def compare(self, node: ast.Compare) -> _Node:
        operands = [node.left, *node.comparators]
        pairs = [self.pair(operands[i], op, operands[i + 1]) for i, op in enumerate(node.ops)]
        return pairs[0] if len(pairs) == 1 else _Logic(BOOL, pc.and_kleene, tuple(pairs))

    def pair(self, left: ast.AST, op: ast.cmpop, right: ast.AST) -> _Node:
        if isinstance(op, (ast.In, ast.NotIn)):
            return self.membership(left, right, isinstance(op, ast.NotIn))
        if isinstance(op, (ast.Is, ast.IsNot)):
            negate = isinstance(op, ast.IsNot)
            for this, other in ((right, left), (left, right)):
                if isinstance(this, ast.Constant) and this.value is None:
                    return _IsNull(BOOL, self.check(other), negate)
            word = "is not" if negate else "is"
            raise self.error(f"`{word}` only tests for None: `{self.seg(left)} {word} {self.seg(right)}`",
                             "compare values with == or !=")
        fn, sym = _COMPARE[type(op)]
        a, b = self.check(left), self.check(right)
        part = f"`{self.seg(left)} {sym} {self.seg(right)}`"
        if NULL in (a.kind, b.kind):
            null_side, other = (left, right) if a.kind == NULL else (right, left)
            if isinstance(null_side, ast.Constant):
                test = "is not None" if sym == "!=" else "is None"
                raise self.error(f"{part} compares with None, which is never true for a missing value",
                                 f"write `{self.seg(other)} {test}`")
            raise self.error(f"{part}: column `{self.seg(null_side)}` holds no values in this manifest "
                             "(its type is null)", "only `is None` / `is not None` can test it")
        if a.kind != b.kind:
            raise self.error(f"{part} compares {_KIND_WORD[a.kind]} with {_KIND_WORD[b.kind]}",
                             self.mismatch_fix(a.kind, b.kind))
        if a.kind == BOOL and sym not in ("==", "!="):
            raise self.error(f"{part} orders bools", "True/False compare with == or != only")
        return _Compare(BOOL, fn, a, b)

    @staticmethod
    def mismatch_fix(a: str, b: str) -> str:
        kinds = {a, b}
        if kinds == {STRING, NUMBER}:
            return 'quote the value to compare text (status == "kept"), or compare a number column with a number'
        if BOOL in kinds:
            return "compare bool columns with True or False (or use them bare: `sync.swapped`, `not sync.swapped`)"
        return "compare values of one type"

    def membership(self, left: ast.AST, right: ast.AST, negate: bool) -> _Node:
        word = "not in" if negate else "in"
        if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
            raise self.error(f"`{word}` needs a list of constants on its right, got `{self.seg(right)}`",
                             f'write e.g. status {word} ("kept", "rejected")')
        arg = self.check(left)
        if arg.kind not in (NUMBER, STRING, BOOL):
            raise self.error(f"`{self.seg(left)}` is {_KIND_WORD[arg.kind]}, which `{word}` cannot test",
                             "put a column on the left of `in`")
        values = []
        for elt in right.elts:
            value = self.literal(elt)
            if value is None:
                raise self.error(f"`{self.seg(elt)}` in `{self.seg(right)}` is not a constant "
                                 f"{'number' if arg.kind == NUMBER else arg.kind}",
                                 f"`{word}` lists constants of the column's type; test missing values with "
                                 "`is None`")
            kind, v = value
            if kind != arg.kind:
                raise self.error(f"`{self.seg(elt)}` is {_KIND_WORD[kind]} but `{self.seg(left)}` is "
                                 f"{_KIND_WORD[arg.kind]}", self.mismatch_fix(kind, arg.kind))
            values.append(v)
        return _In(BOOL, arg, tuple(values), negate)

    def literal(self, node: ast.AST) -> tuple[str, object] | None:
        """(kind, value) of a constant list element (a negative number included), None for anything else."""
        sign = 1.0
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            node = node.operand
            if not (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
                    and not isinstance(node.value, bool)):
                return None
        if not isinstance(node, ast.Constant) or node.value is None:
            return None
        c = self.constant(node)
        return (c.kind, sign * c.value) if c.kind == NUMBER else (c.kind, c.value)


# --- the public API -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Where:
    """A checked --where expression; ``columns`` are the manifest columns it reads, sorted."""

    text: str
    columns: tuple[str, ...]
    _tree: _Node = field(repr=False, compare=False)
    _kinds: tuple[tuple[str, str], ...] = field(repr=False, compare=False)

    def mask(self, table: pa.Table) -> np.ndarray:
        """One bool per row of ``table``: True where the expression is true (unknown counts as False)."""
        cols: dict[str, pa.Array] = {}
        for name, kind in self._kinds:
            if name not in table.column_names:
                raise WhereError(f"--where {_shown(self.text)}: the table has no column `{name}`; it was "
                                 "checked against another schema, parse it again with this table's schema")
            found = _column_kind(table.schema.field(name).type)
            if found != kind:
                raise WhereError(f"--where {_shown(self.text)}: column `{name}` was {_KIND_WORD[kind]} when "
                                 f"checked but is {table.schema.field(name).type} in this table; parse it "
                                 "again with this table's schema")
            cols[name] = _load(table.column(name), kind)
        try:
            out = self._tree.run(cols)
        except (pa.ArrowException, TypeError) as e:
            raise WhereError(f"--where {_shown(self.text)}: could not be evaluated ({e}); please report it, "
                             "with the manifest's schema") from e
        if isinstance(out, pa.Scalar):
            return np.full(table.num_rows, out.is_valid and out.as_py() is True, dtype=bool)
        return np.asarray(pc.fill_null(out, False).to_numpy(zero_copy_only=False), dtype=bool)


def parse_where(text: str, schema: pa.Schema) -> Where:
    """Check ``text`` against ``schema`` (see the module docstring for the grammar); WhereError if unusable."""
    if not isinstance(text, str):
        raise WhereError(f"--where must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise WhereError(f"--where {_shown(text)}: {len(text)} characters, more than the {MAX_LENGTH} allowed. "
                         "Split the selection into steps, or use `in (...)` instead of long `or` chains")
    # a YAML block scalar spans lines; Python's eval mode would refuse a bare line break
    src = " ".join(text.splitlines()).strip()
    if not src:
        raise WhereError("--where is empty. Give a condition, e.g. --where 'picture.sharpness > 0.5'")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        at = f" at column {e.offset}" if e.offset else ""
        raise WhereError(f"--where {_shown(text)}: not a valid expression ({e.msg}{at}). Write Python-style "
                         "conditions: == for equality, and/or/not (not &&, ||, !), strings in quotes") from None
    except (RecursionError, MemoryError, ValueError) as e:
        raise WhereError(f"--where {_shown(text)}: nested too deeply to read ({type(e).__name__}). "
                         "Flatten the expression") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise WhereError(f"--where {_shown(text)}: nested {depth} levels deep, more than the {MAX_DEPTH} "
                         "allowed. Flatten the expression (a chain of `or` is one level; `in (...)` is shorter)")
    checker = _Checker(text, src, schema)
    tree_ = checker.condition(tree.body, "the whole expression")
    kinds = tuple(sorted(checker.used.items()))
    return Where(text=text, columns=tuple(n for n, _ in kinds), _tree=tree_, _kinds=kinds)
