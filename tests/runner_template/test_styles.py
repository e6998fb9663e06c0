"""Parameters are written as OpenAPI says: every cell of the specification's style table (3.1.1, which follows
RFC 6570), for path, header and cookie values, and the query styles."""

from __future__ import annotations

from typing import Any

import pytest

from runner_template.styles import cookie_header, cookie_pairs, form_body, header_value, path_value, query_pairs

STRING, ARRAY, OBJECT = "blue", ["blue", "black", "brown"], {"R": 100, "G": 200, "B": 150}

PATH_TABLE = [
    # style             string           array                                  object
    ("simple", "blue", "blue,black,brown", "R,100,G,200,B,150"),
    ("simple_exploded", "blue", "blue,black,brown", "R=100,G=200,B=150"),
    ("label", ".blue", ".blue,black,brown", ".R,100,G,200,B,150"),
    ("label_exploded", ".blue", ".blue.black.brown", ".R=100.G=200.B=150"),
    ("matrix", ";color=blue", ";color=blue,black,brown", ";color=R,100,G,200,B,150"),
    ("matrix_exploded", ";color=blue", ";color=blue;color=black;color=brown", ";R=100;G=200;B=150"),
]


@pytest.mark.parametrize(("style", "string", "array", "obj"), PATH_TABLE)
def test_path_values_follow_the_specifications_style_table(style: str, string: str, array: str, obj: str) -> None:
    assert path_value("color", STRING, style) == string
    assert path_value("color", ARRAY, style) == array
    assert path_value("color", OBJECT, style) == obj


def test_empty_values_keep_their_prefix_as_the_table_says() -> None:
    assert path_value("color", "", "matrix") == ";color"
    assert path_value("color", "", "label") == "."
    assert path_value("color", "", "simple") == ""


def test_a_path_value_cannot_change_the_paths_shape() -> None:
    assert path_value("id", "../admin?x=1#", "simple") == "..%2Fadmin%3Fx%3D1%23"
    assert path_value("id", ["a/b", "c;d"], "matrix_exploded") == ";id=a%2Fb;id=c%3Bd"


@pytest.mark.parametrize(("style", "array", "obj"), [
    ("simple", "blue,black,brown", "R,100,G,200,B,150"),
    ("simple_exploded", "blue,black,brown", "R=100,G=200,B=150"),
])
def test_header_values_are_simple_style(style: str, array: str, obj: str) -> None:
    assert header_value(STRING, style) == "blue"
    assert header_value(ARRAY, style) == array
    assert header_value(OBJECT, style) == obj
    assert header_value(True) == "true"


def test_cookies_are_form_style() -> None:
    assert cookie_pairs("color", ARRAY, "form") == [("color", "blue"), ("color", "black"), ("color", "brown")]
    assert cookie_pairs("color", ARRAY, "form_joined") == [("color", "blue,black,brown")]
    assert cookie_pairs("color", OBJECT, "form") == [("R", "100"), ("G", "200"), ("B", "150")]
    assert cookie_pairs("session", "a b;c") == [("session", "a%20b%3Bc")]  # no value can add a cookie
    assert cookie_header({"session": "s1", "theme": None, "tags": ["x", "y"]}, {"tags": "form_joined"}) == \
        "session=s1; tags=x,y"
    assert cookie_header({"theme": None}) is None


@pytest.mark.parametrize(("style", "value", "pairs"), [
    ("form", ARRAY, [("color", "blue"), ("color", "black"), ("color", "brown")]),
    ("form", OBJECT, [("R", "100"), ("G", "200"), ("B", "150")]),
    ("form_joined", ARRAY, [("color", "blue,black,brown")]),
    ("form_joined", OBJECT, [("color", "R,100,G,200,B,150")]),
    ("space_delimited", ARRAY, [("color", "blue%20black%20brown")]),
    ("pipe_delimited", ARRAY, [("color", "blue%7Cblack%7Cbrown")]),
    ("deep_object", OBJECT, [("color%5BR%5D", "100"), ("color%5BG%5D", "200"), ("color%5BB%5D", "150")]),
])
def test_query_values_follow_their_style(style: str, value: Any, pairs: list[tuple[str, str]]) -> None:
    assert query_pairs({"color": value}, {"color": style}) == pairs


def test_query_items_are_encoded_but_their_delimiters_are_not() -> None:
    assert query_pairs({"type": ["album", "a,b&c=d"]}, {"type": "form_joined"}) == [("type", "album,a%2Cb%26c%3Dd")]
    assert query_pairs({"DateSent<": "2024-01-01 10:00"}) == [("DateSent%3C", "2024-01-01%2010%3A00")]


def test_an_unknown_style_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="unknown path style"):
        path_value("id", 1, "fancy")
    with pytest.raises(ValueError, match="unknown query style"):
        query_pairs({"q": [1]}, {"q": "fancy"})


def test_form_bodies_repeat_arrays_unless_their_encoding_joins_them() -> None:
    fields = {"To": "+1 555", "MediaUrl": ["https://a.example/1", "x"], "Tags": ["a,1", "b"], "Meta": {"k": "v"},
              "Filter": {"year": 1999}, "Unset": None}
    assert form_body(fields, {"Tags": "form_joined", "Filter": "deep_object"}) == (
        "To=%2B1+555&MediaUrl=https%3A%2F%2Fa.example%2F1&MediaUrl=x&Tags=a%2C1,b&Meta=%7B%22k%22%3A%22v%22%7D"
        "&Filter%5Byear%5D=1999")
