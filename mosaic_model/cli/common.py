"""What the command lines share: flags named after config fields, and one-line errors with exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ..models.config import ConfigError


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows each option's default, except where it is None or
    off (the help then says what leaving it out means)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def flag(field: str) -> str:
    """The command-line flag of a config field: ``n_layer`` -> ``--n-layer``."""
    return "--" + field.replace("_", "-")


def config_error_line(e: ConfigError) -> str:
    """A ConfigError as the command lines say it: the field's flag, then what was expected."""
    return f"{flag(e.field)} {e.what}"


def fail(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` on stderr and exit with code 2 (argparse's usage-error code)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_at_least_one(p: argparse.ArgumentParser, a: argparse.Namespace, names: tuple[str, ...]) -> None:
    """A one-line CLI error (exit 2) for the first option of ``names`` (attribute names) that is below 1;
    options that are None or absent (optional, or another subcommand's) pass."""
    for name in names:
        v = getattr(a, name, None)
        if v is not None and v < 1:
            p.error(f"{flag(name)} must be >= 1, got {v}")
