"""Shared plumbing of the stage scripts: flags generated from the settings, logging, one-sentence errors."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from pydantic import ValidationError

from housing.config.settings import Settings, get_settings
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


class StopRequest:
    """SIGINT and SIGTERM, while a repeating command runs, ask it to stop after the work in progress instead
    of interrupting it half-way (a round that records, retrains or writes a report). A second SIGINT stops at
    once. Use as ``with StopRequest() as stop: ... if stop.wait(seconds): return stop.exit_code()``.

    The handler only records the signal: a lock taken in a handler (``threading.Event.set``) deadlocks when
    the signal lands while the main thread holds that lock, waiting. :meth:`wait` sleeps in short steps and
    looks at the record between them."""

    STEP_SECONDS = 0.1

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print("stopping after the round in progress (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether a stop was requested (at once if it already was)."""
        steps = max(1, math.ceil(seconds / self.STEP_SECONDS))
        for _ in range(steps):
            if self.signal is not None:
                return True
            time.sleep(seconds / steps)
        return self.signal is not None

    def exit_code(self) -> int:
        """130 after SIGINT (said as ``interrupted``), 0 after SIGTERM (a process manager's normal stop)."""
        if self.signal == signal.SIGINT:
            print("interrupted", file=sys.stderr)
            return 130
        print("stopped", file=sys.stderr)
        return 0
