"""``rules.source``: libyaml-based loading with positions, YAML 1.2 scalars, and parity with the
ruamel.yaml round-trip loader it replaced (same values, same line and column for every node)."""

from __future__ import annotations

import io
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from rules import yaml12
from rules.source import Document, YamlFileError, load_yaml, plain, position

REPO = Path(__file__).resolve().parents[2]

SCALARS = [
    ("no", "no"),
    ("on", "on"),
    ("yes", "yes"),
    ("off", "off"),
    ("010", 10),
    ("0o10", 8),
    ("0x1f", 31),
    ("1_000", 1000),
    ("1:30", "1:30"),
    ("12:30:00", "12:30:00"),
    ("~", None),
    ("null", None),
    ("", None),
    ("true", True),
    ("False", False),
    ("tRue", "tRue"),
    ("1.5", 1.5),
    ("1e3", 1000.0),
    ("-.inf", -math.inf),
    ('"010"', "010"),
    ("'no'", "no"),
    ("!!str 1", "1"),
    ("!!float 1", 1.0),
    ("2026-03-04", date(2026, 3, 4)),
    ("2026-3-4", "2026-3-4"),
    (
        "2026-03-04T10:00:00+08:00",
        datetime(2026, 3, 4, 10, tzinfo=timezone(timedelta(hours=8))),
    ),
    ("=", "="),
    ("退款", "退款"),
]


@pytest.mark.parametrize(("written", "value"), SCALARS)
def test_yaml_1_2_scalars(written: str, value: object) -> None:
    data = plain(load_yaml(f"k: {written}\n", "f.yaml").data)
    assert data == {"k": value}
    assert type(data["k"]) is type(value)


def problems(text: str) -> list[str]:
    with pytest.raises(YamlFileError) as info:
        load_yaml(text, "f.yaml")
    return [str(p) for p in info.value.problems]


def test_every_duplicate_key_is_an_error_at_the_second_key() -> None:
    assert problems("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n") == [
        'f.yaml:4:3: E002 duplicate key "c" (each key may appear once in a mapping)',
        'f.yaml:5:1: E002 duplicate key "a" (each key may appear once in a mapping)',
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !foo x\n", 'f.yaml:1:4: E001 invalid YAML: unsupported tag "!foo"'),
        ("a: !!set {x}\n", 'f.yaml:1:4: E001 invalid YAML: unsupported tag "!!set"'),
        ("a: !!int x\n", 'f.yaml:1:4: E001 invalid YAML: "x" is not a valid !!int'),
        ("a: &x [*x]\n", "f.yaml:1:4: E001 invalid YAML: recursive alias (a node inside itself)"),
        ("? [a]\n: 1\n", "f.yaml:1:3: E001 invalid YAML: a key must be a single value"),
        ("a: 1\n---\nb: 2\n", "f.yaml:2:1: E001 invalid YAML: expected a single document"),
    ],
)
def test_unsupported_yaml_is_reported_with_its_position(text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_merge_keys_and_their_positions() -> None:
    doc = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", "f.yaml")
    assert plain(doc.data) == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}
    assert position(doc.data, ["other", "x"])[:2] == (1, 14)  # where x was written: the base
    assert position(doc.data, ["other", "y"])[:2] == (4, 6)


def test_empty_value_is_placed_on_its_key_line() -> None:
    """ruamel placed a null value at the next token (often the next line); libyaml's mark
    is right after the colon, on the key's own line — more useful in a message."""
    doc = load_yaml("a:\nb: 1\n", "f.yaml")
    assert position(doc.data, ["a"])[:2] == (1, 3)


# -- parity with ruamel.yaml's round-trip loader -----------------------------------------


def _ruamel_position(data: Any, path: list[Any], at: str) -> tuple[int, int]:
    """The positions the ruamel-based ``rules.source`` reported (its algorithm, unchanged)."""
    line, col = 1, 1
    node = data
    if isinstance(node, CommentedMap | CommentedSeq):
        line, col = node.lc.line + 1, node.lc.col + 1
    for i, step in enumerate(path):
        if isinstance(node, CommentedMap) and step in node:
            kline, kcol = node.lc.key(step)
            vline, vcol = node.lc.value(step)
            if i == len(path) - 1 and at == "key":
                return kline + 1, kcol + 1
            line, col, node = vline + 1, vcol + 1, node[step]
        elif isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node):
            iline, icol = node.lc.item(step)
            line, col, node = iline + 1, icol + 1, node[step]
        else:
            break
    return line, col


def _at(data: Any, path: list[Any]) -> Any:
    for step in path:
        data = data[step]
    return data


def _paths(data: Any, prefix: list[Any]) -> list[list[Any]]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, [*prefix, key])
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, [*prefix, i])
    return out


words = st.text(alphabet="ab退款 -'\"", min_size=1, max_size=6)  # ruamel dumps some ':' invalid
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    words,
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3),
        st.dictionaries(words, inner, min_size=1, max_size=3),
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(words, trees, min_size=1, max_size=4), st.sampled_from([None, True, False]))
def test_same_values_and_positions_as_ruamel(data: dict[str, Any], flow: bool | None) -> None:
    dumper = YAML()
    dumper.default_flow_style = flow
    out = io.StringIO()
    dumper.dump(data, out)
    text = out.getvalue()
    reference = YAML(typ="rt").load(text)
    doc = load_yaml(text, "f.yaml")
    assert plain(doc.data) == plain(reference) == data
    for path in _paths(data, []):
        for at in ("key", "value"):
            if at == "value" and _at(data, path) is None:
                continue  # an empty value: placed on its key's line now (see above)
            expected = _ruamel_position(reference, path, at)
            assert position(doc.data, path, at=at)[:2] == expected, (text, path, at)  # type: ignore[arg-type]


def test_without_libyaml_the_pure_python_parser_gives_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (REPO / "tests" / "rules" / "data" / "example.yaml").read_text("utf-8")
    fast = load_yaml(text, "f.yaml")
    monkeypatch.setattr(yaml12, "_Composer", yaml12._PyComposer)
    slow = load_yaml(text, "f.yaml")
    assert plain(slow.data) == plain(fast.data)
    for path in _paths(plain(fast.data), []):
        assert position(slow.data, path) == position(fast.data, path)


def test_what_only_yaml_1_2_reads_falls_back_to_ruamel() -> None:
    """libyaml rejects JSON's surrogate-pair escapes (json.dumps of an emoji); ruamel reads it."""
    text = '{"a": "\\ud83d\\ude00", "b": [1, {"c": 2}]}'
    doc = load_yaml(text, "f.yaml")
    assert plain(doc.data) == {"a": "\ud83d\ude00", "b": [1, {"c": 2}]}
    assert position(doc.data, ["b", 1, "c"])[:2] == (1, text.index("2") + 1)
    assert problems('{"a": "\\ud83d\\ude00", "a": 1}') == [
        'f.yaml:1:23: E002 duplicate key "a" (each key may appear once in a mapping)'
    ]


yamlish = st.text(alphabet=st.sampled_from("ab:-?[]{},&*!<>|'\"#% \n\t0\\退"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(yamlish)
def test_any_text_loads_or_is_a_positioned_problem(text: str) -> None:
    outcome = _outcome(text)
    if isinstance(outcome, YamlFileError):
        assert outcome.problems
        assert all(p.line >= 1 and p.col >= 1 for p in outcome.problems)
    else:
        for path in _paths(plain(outcome.data), []):
            assert position(outcome.data, path)[0] >= 1


def _outcome(text: str) -> Document | YamlFileError:
    try:
        return load_yaml(text, "f.yaml")
    except YamlFileError as exc:
        return exc
