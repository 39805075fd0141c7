"""`mtcc select --where`: the filter language over a manifest (pipeline/where.py).

Small tables with planted values (nulls and a NaN among them) check every operator, chains, precedence,
`in`, bool and string columns and the three-valued null logic by the keys selected; hostile and malformed
expressions must end in a WhereError that names the part and the fix, with nothing executed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mtcc.pipeline.where import MAX_LENGTH, Where, WhereError, parse_where

NAN = float("nan")


def manifest() -> pa.Table:
    return pa.table({
        "key": pa.array(list("abcdef")),
        "status": pa.array(["kept", "rejected", "kept", "rejected", "kept", None]),
        "shard": pa.array([0, 0, 1, 1, 2, 2], pa.int32()),
        "start": pa.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]),
        "end": pa.array([1.0, 3.0, 3.0, 6.0, 8.0, 5.5]),
        "picture.sharpness": pa.array([0.1, 0.5, 0.9, None, 0.95, NAN]),
        "sound.ovrl_mix": pa.array([3.0, 2.0, None, 4.0, 3.5, 1.0]),
        "text.text_over_face_0": pa.array([0, 1, 2, None, 0, 3], pa.int64()),
        "sync.sync_c_mean": pa.array([5.0, -1.0, 0.0, 2.5, None, 7.0]),
        "sync.swapped": pa.array([True, False, None, False, True, False]),
        "text.text_read": pa.array(["hello", "", None, "World", "hello world", "x"]),
        "faces.boxes": pa.array([[0.0], [], None, [1.0, 2.0], [], [3.0]], pa.list_(pa.float64())),
    })


TABLE = manifest()


def selected(expr: str, table: pa.Table = TABLE) -> str:
    m = parse_where(expr, table.schema).mask(table)
    assert m.dtype == np.bool_ and m.shape == (table.num_rows,)
    return "".join(k for k, keep in zip(table.column("key").to_pylist(), m) if keep)


def error(expr: str, table: pa.Table = TABLE) -> str:
    with pytest.raises(WhereError) as e:
        parse_where(expr, table.schema)
    assert isinstance(e.value, ValueError)
    return str(e.value)


@pytest.mark.parametrize("expr, keys", [
    # numbers; d is null and f NaN, so no comparison selects them
    ("picture.sharpness > 0.5", "ce"),
    ("picture.sharpness >= 0.5", "bce"),
    ("picture.sharpness < 0.5", "a"),
    ("picture.sharpness <= 0.5", "ab"),
    ("picture.sharpness == 0.5", "b"),
    ("picture.sharpness != 0.5", "ace"),
    ("0.5 < picture.sharpness", "ce"),
    ("text.text_over_face_0 == 0", "ae"),
    ("shard >= 1", "cdef"),
    ("shard == 1.0", "cd"),
    ("sync.sync_c_mean < -0.5", "b"),
    ("sound.ovrl_mix > sync.sync_c_mean", "bd"),
    # chains are `and`s of the pairs
    ("0.2 < picture.sharpness <= 0.9", "bc"),
    ("1 <= shard <= 1", "cd"),
    ("0 < sync.sync_c_mean < sound.ovrl_mix", "d"),
    ("shard == 1 < sound.ovrl_mix", "d"),
    # arithmetic and unary minus
    ("end - start > 1.5", "bde"),
    ("end - start * 2 > 0", "ab"),
    ("(end - start) * 2 > 2", "bde"),
    ("end / 2 + 1 >= 4", "de"),
    ("-sync.sync_c_mean > 0", "b"),
    ("- -shard == 2", "ef"),
    ("+shard == 0", "ab"),
    ("sound.ovrl_mix - -1 == 4", "a"),
    # abs / min / max; a missing argument makes the result missing
    ("abs(sync.sync_c_mean) >= 1", "abdf"),
    ("abs(end - start - 3) < 0.6", "d"),
    ("min(sound.ovrl_mix, sync.sync_c_mean) > 2.2", "ad"),
    ("max(picture.sharpness, 0.6, sound.ovrl_mix / 10) >= 0.6", "abe"),
    # division by zero is missing, not inf
    ("sync.sync_c_mean / text.text_over_face_0 > 1", "f"),
    ("sync.sync_c_mean / text.text_over_face_0 is None", "ade"),
    ("sync.sync_c_mean / 0 is None", "abcdef"),
])
def test_numbers(expr: str, keys: str) -> None:
    assert selected(expr) == keys


@pytest.mark.parametrize("expr, keys", [
    ('status == "kept" or shard == 1 and sound.ovrl_mix > 3', "acde"),
    ('(status == "kept" or shard == 1) and sound.ovrl_mix > 3', "de"),
    ('not status == "kept"', "bd"),
    ('not status == "kept" and shard == 0', "b"),
    ('not (status == "kept" and shard == 0)', "bcdef"),  # f: not (unknown and False) is True
    ("shard == 0 or shard == 2 and sync.swapped", "abe"),
    ("(shard == 0 or shard == 2) and sync.swapped", "ae"),
])
def test_precedence(expr: str, keys: str) -> None:
    assert selected(expr) == keys


@pytest.mark.parametrize("expr, keys", [
    ('status in ("kept", "other")', "ace"),
    ('status not in ["kept"]', "bd"),
    ('status in {"rejected"}', "bd"),
    ("shard in (0, 2)", "abef"),
    ("shard not in (0, 2)", "cd"),
    ("text.text_over_face_0 in (-1, 3)", "f"),
    ("sync.sync_c_mean in (-1, 0.0)", "bc"),
    ("sync.swapped in (True,)", "ae"),
    ("status in ()", ""),
    ("status not in ()", "abcde"),
    ("picture.sharpness not in (0.1,)", "bce"),
])
def test_in(expr: str, keys: str) -> None:
    assert selected(expr) == keys


@pytest.mark.parametrize("expr, keys", [
    ("sync.swapped", "ae"),
    ("not sync.swapped", "bdf"),
    ("sync.swapped == False", "bdf"),
    ("sync.swapped != True", "bdf"),
    ("sync.swapped == True", "ae"),
    ("sync.swapped is None", "c"),
    ("sync.swapped is not None", "abdef"),
    ('sync.swapped or status == "kept"', "ace"),
    ("sync.swapped and picture.sharpness > 0.9", "e"),
    ("not sync.swapped and not (shard == 0)", "df"),
])
def test_bool_columns(expr: str, keys: str) -> None:
    assert selected(expr) == keys


@pytest.mark.parametrize("expr, keys", [
    ('text.text_read == "hello"', "a"),
    ("text.text_read == 'hello'", "a"),
    ('text.text_read != ""', "adef"),
    ('text.text_read >= "hello"', "aef"),
    ('col("text.text_read") == "x"', "f"),
    ('key == "a" or key == "f"', "af"),
    ('status == "kept" and text.text_read < "hello "', "a"),
])
def test_strings(expr: str, keys: str) -> None:
    assert selected(expr) == keys


@pytest.mark.parametrize("expr, keys", [
    # a missing stat (d: null, f: NaN) is never selected by a comparison, nor by its negation
    ("picture.sharpness > 0.5", "ce"),
    ("not (picture.sharpness > 0.5)", "ab"),
    ("not picture.sharpness > 0.5", "ab"),
    ("picture.sharpness != 0.5", "ace"),
    ("picture.sharpness is None", "df"),
    ("None is picture.sharpness", "df"),
    ("picture.sharpness is not None", "abce"),
    ("picture.sharpness is None or picture.sharpness <= 0.5", "abdf"),
    ('status != "kept"', "bd"),
    ("status is None", "f"),
    # Kleene: True wins `or`, False wins `and`, whatever the other side
    ("picture.sharpness > 0.5 or True", "abcdef"),
    ("picture.sharpness > 0.5 and False", ""),
    ("not (picture.sharpness > 0.5 and False)", "abcdef"),
    ("picture.sharpness > 0.5 or sound.ovrl_mix > 3.2", "cde"),
    ("not (picture.sharpness > 0.5 or sound.ovrl_mix > 3.2)", "ab"),
    ("picture.sharpness + 1 > 0", "abce"),
    ("(picture.sharpness + 1) is None", "df"),
])
def test_null_logic(expr: str, keys: str) -> None:
    assert selected(expr) == keys


def test_where_object() -> None:
    w = parse_where('sync.swapped and picture.sharpness > 0 and col("text.text_read") == "x" and shard == 2',
                    TABLE.schema)
    assert isinstance(w, Where)
    assert w.columns == ("picture.sharpness", "shard", "sync.swapped", "text.text_read")
    assert w.text.startswith("sync.swapped and")
    with pytest.raises(AttributeError):
        w.text = "x"  # type: ignore[misc]
    assert parse_where("shard == shard", TABLE.schema).columns == ("shard",)


def test_constant_expression_and_layout() -> None:
    assert selected("1 < 2") == "abcdef"
    assert selected("1 > 2 or None is None") == "abcdef"
    assert selected("  shard == 0  ") == "ab"
    # a YAML block scalar keeps its line breaks
    assert selected('status == "kept"\n  and shard == 0\r\n') == "a"
    empty = TABLE.slice(0, 0)
    assert parse_where("shard > 0", TABLE.schema).mask(empty).shape == (0,)
    assert parse_where("1 < 2", TABLE.schema).mask(empty).shape == (0,)


def test_chunked_dictionary_and_wide_types() -> None:
    two = pa.concat_tables([TABLE.slice(0, 2), TABLE.slice(2, 1), TABLE.slice(3)])
    assert two.column("shard").num_chunks == 3
    assert selected("0.2 < picture.sharpness <= 0.9 or sync.swapped", two) == "abce"
    t = pa.table({"key": list("abc"),
                  "level": pa.array(["video", "clip", None]).dictionary_encode(),
                  "source": pa.array(["x", "y", "x"], pa.large_string()),
                  "n": pa.array([1, 2, 3], pa.uint8()),
                  "f": pa.array([0.5, 1.5, None], pa.float32())})
    assert selected('level == "clip"', t) == "b"
    assert selected('level in ("video",)', t) == "a"
    assert selected('source == "x" and n > 1', t) == "c"
    assert selected('source in ("y",)', t) == "b"
    assert selected("n * 100 > 250", t) == "c"  # 300 in float, not 44 in uint8
    assert selected("f > 1", t) == "b"


def test_mask_checks_the_table_against_the_parse() -> None:
    w = parse_where("picture.sharpness > 0.5", TABLE.schema)
    with pytest.raises(WhereError, match="no column `picture.sharpness`"):
        w.mask(TABLE.drop_columns(["picture.sharpness"]))
    changed = TABLE.set_column(TABLE.schema.get_field_index("picture.sharpness"), "picture.sharpness",
                               pa.array(["x"] * 6))
    with pytest.raises(WhereError, match="parse it again"):
        w.mask(changed)


@pytest.mark.parametrize("expr, near", [
    ("picture.sharpnes > 0.5", "picture.sharpness"),
    ("sharpness > 0.5", "picture.sharpness"),
    ("pictures.sharpness > 0.5", "picture.sharpness"),
    ('col("sync.sync_c_meen") > 1', "sync.sync_c_mean"),
    ("Status == 'kept'", "status"),
    ("sync.swaped", "sync.swapped"),
])
def test_unknown_column_suggests(expr: str, near: str) -> None:
    msg = error(expr)
    assert repr(expr) in msg
    assert f"Did you mean `{near}`" in msg
    assert "mtcc report OUT" in msg and "read_schema" in msg


def test_unknown_column_without_near_name() -> None:
    msg = error("zzzz > 1")
    assert "no column `zzzz`" in msg and "Did you mean" not in msg and "mtcc report OUT" in msg


@pytest.mark.parametrize("expr, parts", [
    ("status == 1", ["`status == 1`", "a string", "a number", "Quote the value"]),
    ('picture.sharpness == "high"', ["a number", "a string"]),
    ("sync.swapped == 1", ["a bool", "True or False"]),
    ("sync.swapped < True", ["orders bools"]),
    ("status in (1, 2)", ["`1`", "a number", "`status` is a string"]),
    ('shard in ("a",)', ["a string", "a number"]),
    ("shard in (1, None)", ["`None`", "is None"]),
    ("shard in (1, key)", ["`key`", "not a constant"]),
    ("status in status", ["list of constants"]),
    ("faces.boxes > 0", ["`faces.boxes` is a list column"]),
    ("faces.boxes is None", ["list column"]),
    ("picture.sharpness == None", ["never true", "Write `picture.sharpness is None`"]),
    ("picture.sharpness != None", ["Write `picture.sharpness is not None`"]),
    ("picture.sharpness is 0.5", ["only tests for None", "=="]),
    ("picture.sharpness", ["must be a condition", "`picture.sharpness > 0`"]),
    ("status", ["must be a condition", '`status == "..."`']),
    ("picture.sharpness + 1", ["must be a condition"]),
    ("picture.sharpness and sync.swapped", ["each side of `and` must be a condition", "`picture.sharpness` is a number"]),
    ("not status", ["what `not` negates must be a condition"]),
    ('status + "x" == "y"', ["`+` works on numbers", "`status` is a string"]),
    ("-status == 1", ["unary `-`"]),
    ("abs(shard, 1) > 0", ["abs() takes one argument"]),
    ("min(shard) > 0", ["min() takes two or more"]),
    ("max(shard, status) > 0", ["max() works on numbers"]),
    ("min(shard, *[1]) > 0", ["starred"]),
    ("max(shard, default=1) > 0", ["keyword"]),
    ("col(1) > 0", ["must name one column"]),
    ("col(shard) > 0", ["must name one column"]),
    ("picture.sharpness.real > 0", ["attribute access `.real` on column `picture.sharpness`"]),
    ("10 ** 1000 > shard", ["`**`"]),
])
def test_type_errors(expr: str, parts: list[str]) -> None:
    msg = error(expr)
    assert repr(expr) in msg
    for p in parts:
        assert p in msg, (p, msg)


def test_huge_integer_is_refused_not_overflowed() -> None:
    msg = error("9" * 400 + " > shard")
    assert "too large" in msg and len(msg) < 600


@pytest.mark.parametrize("expr, named", [
    ("__import__('os').system('touch {p}')", "calling `__import__('os').system`"),
    ("__import__('os')", "calling `__import__`"),
    ("().__class__", "attribute access `.__class__` on `()`"),
    ("().__class__.__bases__[0].__subclasses__()", "calling"),
    ("open('{p}', 'w')", "calling `open`"),
    ("exec(\"open('{p}', 'w')\")", "calling `exec`"),
    ("eval('1')", "calling `eval`"),
    ("globals()", "calling `globals`"),
    ("breakpoint()", "calling `breakpoint`"),
    ("getattr(status, 'upper')", "calling `getattr`"),
    ("status.upper() == 'KEPT'", "calling `status.upper`"),
    ("lambda: 1", "a lambda"),
    ("(lambda: open('{p}', 'w'))()", "calling `lambda: open"),
    ("status[0] == 'k'", "a subscript"),
    ("status[:1] == 'k'", "a subscript"),
    ("[x for x in status]", "a comprehension"),
    ("any(x for x in status)", "calling `any`"),
    ("(y := 1) > 0", "an assignment expression"),
    ("f'{status}' == 'kept'", "an f-string"),
    ("1 if sync.swapped else 0", "a conditional expression"),
    ("{'a': 1}", "a dict"),
    ("(shard, 1)", "a tuple"),
    ("[shard] == [1]", "a list"),
    ("b'x' == status", "a bytes literal"),
    ("1j == shard", "a complex number"),
    ("... == shard", "`...`"),
    ("picture.sharpness // 2 > 0", "`//`"),
    ("shard % 2 == 0", "`%`"),
    ("~sync.swapped", "`~`"),
    ("sync.swapped & True", "`&`"),
    ("sync.swapped | True", "`|`"),
    ("shard << 1 > 0", "`<<`"),
    ("picture.sharpness.__class__", "attribute access `.__class__`"),
    ("picture.__class__.__init__", "no column `picture.__class__.__init__`"),
])
def test_refused_constructs_run_nothing(expr: str, named: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    expr = expr.replace("{p}", str(marker))
    msg = error(expr)
    assert named in msg, msg
    assert not marker.exists()


@pytest.mark.parametrize("expr, part", [
    ("picture.sharpness > ", "not a valid expression"),
    ("shard == 0 && sync.swapped", "not a valid expression"),
    ("shard = 0", "not a valid expression"),
    ("import os", "not a valid expression"),
    ("shard == 0; 1", "not a valid expression"),
    ("shard\x00 == 0", "not a valid expression"),
    ("", "empty"),
    ("   \n ", "empty"),
])
def test_syntax_errors(expr: str, part: str) -> None:
    assert part in error(expr)


def test_non_string_is_refused() -> None:
    with pytest.raises(WhereError, match="must be a string"):
        parse_where(1, TABLE.schema)  # type: ignore[arg-type]


def test_too_long() -> None:
    expr = " or ".join(["picture.sharpness > 0.5"] * 100)
    assert len(expr) > MAX_LENGTH
    msg = error(expr)
    assert f"{MAX_LENGTH} allowed" in msg and "in (...)" in msg
    assert len(msg) < 500  # the message quotes the start of the expression, not all of it
    ok = " or ".join(["shard == 1"] * 140)  # long but flat: one `or`
    assert len(ok) <= MAX_LENGTH and selected(ok) == "cd"


@pytest.mark.parametrize("expr", [
    "(" * 300 + "shard" + ")" * 300 + " > 0",
    "not " * 450 + "sync.swapped",
    "not " * 400 + "sync.swapped",
    "-" * 1500 + "shard > 0",
    " + ".join(["shard"] * 200) + " > 0",
    "abs(" * 150 + "shard" + ")" * 150 + " > 0",
])
def test_too_deep(expr: str) -> None:
    msg = error(expr)
    assert "nest" in msg or "too" in msg, msg


def test_depth_near_the_limit_still_works() -> None:
    assert selected(" + ".join(["shard"] * 40) + " > 39") == "cdef"
    assert selected("not " * 40 + "sync.swapped") == "ae"


def test_all_null_column() -> None:
    t = pa.table({"key": list("ab"), "asd.score": pa.nulls(2)})
    assert selected("asd.score is None", t) == "ab"
    assert selected("asd.score is not None", t) == ""
    assert "holds no values" in error("asd.score > 1", t)
