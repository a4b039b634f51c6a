"""Errors about the user's input (files, configs), reported as one line by the CLI."""


class InputError(ValueError):
  """A file or config field is missing, malformed or inconsistent; the message names it."""
