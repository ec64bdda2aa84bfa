"""Command-line parsing: argparse with one-line mistakes, and range-checked number types."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable


ON_OFF_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class CommandLineParser(argparse.ArgumentParser):
    """argparse with defaults shown in --help and a mistake reported as one line, exit status 2.
    With `on_off_values`, every on/off flag (store_true) also takes SageMaker's form, a value of
    True or False (true, 1, yes, false, 0, no) after it or after `=`; only those words are taken as
    its value, never a file name that follows."""

    def __init__(self, on_off_values: bool = False, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self.on_off_values = on_off_values

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        if self.on_off_values:
            args = self.plain_on_off_flags(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)

    def plain_on_off_flags(self, argv: list[str]) -> list[str]:
        """argv with `--flag True` and `--flag=true` as `--flag`, and `--flag False` left out."""
        on_off = {option for action in self._actions if isinstance(action, argparse._StoreTrueAction)
                  for option in action.option_strings}
        plain, skip = [], False
        for i, word in enumerate(argv):
            if skip:
                skip = False
                continue
            flag, equals, value = word.partition("=")
            if flag not in on_off:
                plain.append(word)
                continue
            if equals and value.lower() not in ON_OFF_WORDS:
                self.error(f"{flag}={value}: an on/off flag takes True or False (or no value)")
            if not equals:
                skip = i + 1 < len(argv) and argv[i + 1].lower() in ON_OFF_WORDS
                value = argv[i + 1] if skip else "true"
            if ON_OFF_WORDS[value.lower()]:
                plain.append(flag)
        return plain


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each flag's default after its help."""


def number_type(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], int | float]:
    """An argparse type: a `kind` (int or float) within [low, high] (open at either end when told),
    with a message that says which values are allowed."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or not math.isfinite(value):
            allowed = describe_range(low, high, low_open, high_open)
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {allowed}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def describe_range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""
    return number_type(int, low, high)


# every number a flag takes has a ceiling: a value beyond it is a typo, refused before any work
LARGEST = 10**6


positive_int = number_type(int, 1, LARGEST)


non_negative_int = number_type(int, 0, LARGEST)


positive_float = number_type(float, 0, LARGEST, low_open=True)


non_negative_float = number_type(float, 0, LARGEST)


fraction = number_type(float, 0, 1)


def multiple_of_32(text: str) -> int:
    """An argparse type: a multiple of 32 from 32 to 4096 (a crop or image side every backbone's
    strides divide)."""
    value = bounded_int(1, 4096)(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"{text} is not a multiple of 32 (e.g. 128, 256)")
    return value
