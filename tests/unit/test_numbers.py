"""caesar_rest.numbers: numbers from clients are ASCII digits, finite and within bounds, or a 400 that names them."""
from __future__ import annotations

import pytest

from caesar_rest.numbers import INT64, NumberError, json_int, json_number, parse_int, parse_number


@pytest.mark.parametrize("text, value", [("0", 0), ("42", 42), ("-7", -7), ("+7", 7), ("007", 7),
                                         ("9223372036854775807", INT64)])
def test_decimal_integers_in_ascii_digits_are_read(text, value):
    assert parse_int(text, "n") == value


@pytest.mark.parametrize("text", ["", " 1", "1 ", "1_000", "1.0", "1e3", "0x10", "\u00b2", "\u0663", "\uff11",
                                  "--1", "+", "12345678901234567890", None, 5, b"5"])
def test_anything_else_is_refused_naming_the_value(text):
    with pytest.raises(NumberError) as caught:
        parse_int(text, "The page size", field="page_size")
    assert caught.value.message.startswith("The page size must be a whole number written in digits 0-9")
    assert caught.value.details == {"field": "page_size"}


def test_integer_bounds_are_named():
    assert parse_int("5", "n", 1, 5) == 5
    with pytest.raises(NumberError, match="n must be at least 1, not 0"):
        parse_int("0", "n", 1, 5)
    with pytest.raises(NumberError, match="n must be at most 5, not 6"):
        parse_int("6", "n", 1, 5)
    with pytest.raises(NumberError, match="at most"):
        parse_int("9223372036854775808", "n")            # 19 digits, one past INT64


@pytest.mark.parametrize("text, value", [("1", 1.0), ("-1.5", -1.5), (".5", 0.5), ("5.", 5.0), ("1e3", 1000.0),
                                         ("2.5E-2", 0.025)])
def test_decimal_numbers_are_read(text, value):
    assert parse_number(text, "x") == value


@pytest.mark.parametrize("text, words", [("nan", "digits 0-9"), ("inf", "digits 0-9"), ("1e400", "too large"),
                                         ("1e12345", "digits 0-9"), ("1,5", "digits 0-9"), ("\u0661.5", "digits 0-9"),
                                         ("", "digits 0-9")])
def test_numbers_that_are_not_finite_decimals_are_refused(text, words):
    with pytest.raises(NumberError, match=words):
        parse_number(text, "x")


@pytest.mark.parametrize("value, out", [(3, 3), (3.0, 3), (-2, -2), (0.0, 0)])
def test_json_integers_and_integral_floats_are_integers(value, out):
    result = json_int(value, "n")
    assert result == out and type(result) is int


@pytest.mark.parametrize("value", [True, False, 3.5, float("nan"), float("inf"), "3", None, [3], 2**63])
def test_json_values_that_are_not_integers_are_refused(value):
    with pytest.raises(NumberError):
        json_int(value, "n")


@pytest.mark.parametrize("value", [True, "1.5", None, float("nan"), float("-inf"), 2**64, {"v": 1}])
def test_json_values_that_are_not_finite_numbers_are_refused(value):
    with pytest.raises(NumberError):
        json_number(value, "x")


def test_json_numbers_keep_their_value_and_bounds():
    assert json_number(2, "x") == 2 and json_number(0.25, "x", 0, 1) == 0.25
    with pytest.raises(NumberError, match=r"x must be at most 1, not 1\.5"):
        json_number(1.5, "x", 0, 1)


def test_a_long_value_is_cut_short_in_the_message():
    with pytest.raises(NumberError) as caught:
        parse_int("x" * 500, "n")
    assert len(caught.value.message) < 150 and caught.value.message.endswith("...")
