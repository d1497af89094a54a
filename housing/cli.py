"""Shared plumbing of the stage scripts: flags generated from the settings, logging, one-sentence errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pydantic import ValidationError

from housing.config import Settings, get_settings
from housing.errors import UserError

EXIT_USER_ERROR = 2


def add_setting_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add ``--some-name`` flags for the named settings; help text and env var come from the settings."""
    for name in names:
        field = Settings.model_fields[name]
        env = "MLFLOW_TRACKING_URI" if name == "tracking_uri" else f"HOUSING_{name.upper()}"
        description = field.description or name.replace("_", " ").capitalize()
        default = field.get_default(call_default_factory=True)
        kwargs: dict[str, Any] = {"dest": name, "default": None, "metavar": name.upper()}
        if name == "candidates":
            kwargs.update(nargs="+", metavar="NAME")
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction)
            kwargs.pop("metavar")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs["type"] = type(default)
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            help=f"{description} [env {env}; default {default}]",
            **kwargs,
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags the user gave on top."""
    overrides = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    return get_settings(**overrides)


def configure_logging(verbose: bool = False) -> None:
    """Progress lines on stderr; MLflow's own chatter only from warnings up."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser) -> NoReturn:
    """Parse the arguments, run ``main`` and exit; user errors become one sentence and exit code 2."""
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    args = parser.parse_args()
    configure_logging(args.verbose)
    try:
        code = main(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        print(f"error: invalid setting {where}: {first['msg']}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
