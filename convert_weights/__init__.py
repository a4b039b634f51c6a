"""Converters from published checkpoint formats to dgan_jax's own."""

import argparse


def non_negative_int(text: str) -> int:
  """argparse type: an integer >= 0."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
  if value < 0:
    raise argparse.ArgumentTypeError(f'{value} is negative')
  return value


def positive_float(text: str) -> float:
  """argparse type: a number > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f'{text} is not positive')
  return value


def positive_ints(text: str) -> tuple[int, ...]:
  """argparse type: comma-separated integers > 0, e.g. '12,24,36'."""
  try:
    values = tuple(int(part) for part in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of '
                                     'integers') from None
  if not all(v > 0 for v in values):
    raise argparse.ArgumentTypeError(f'{text!r} holds a value below 1')
  return values
