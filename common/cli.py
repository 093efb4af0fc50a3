"""Command-line entry points: settings the user got wrong end in one line, not a traceback.

A `ConfigError` says what is wrong and how to fix it. `run_main` runs a command's
`main`, prints a ConfigError as `error: <what> — <how to fix>` on stderr and exits with
status 2; any other exception is a bug and keeps its traceback. `common.config.parse`
raises a ConfigError for a wrong flag or value, and for any setting a config's own
`validate()` refuses (there a ConfigError carries the `field` it blames, which `parse`
turns into the flag the user typed), so those end in the same one line.

    if __name__ == "__main__":
        sys.exit(run_main(main))
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

CONFIG_ERROR_STATUS = 2  # the status of usage errors (argparse's, tyro's)


class ConfigError(Exception):
    """A setting, file or address the user must fix; `fix` says how.

    `field` names the config field at fault, relative to the config that raised it
    ("samples_per_insert", "limiter.min_ready_steps"); `common.config.parse` replaces it
    by the flag (`--limiter.samples-per-insert -1: ...`).
    """

    def __init__(self, what: str, fix: str = "", field: str | None = None):
        super().__init__(what, fix, field)
        self.what, self.fix, self.field = what, fix, field

    def __str__(self) -> str:
        text = f"{self.what} — {self.fix}" if self.fix else self.what
        return f"{self.field}: {text}" if self.field else text


@contextlib.contextmanager
def config_errors(fix: str) -> Iterator[None]:
    """Treat ValueErrors raised while checking settings as the user's to fix.

    Wrap only checks of user input (env ids, value ranges), never work that could fail
    from a bug: there a ValueError must keep its traceback.
    """
    try:
        yield
    except ValueError as exc:
        raise ConfigError(str(exc), fix) from None


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)`; a ConfigError becomes one line on stderr and exit status 2."""
    try:
        return main(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return CONFIG_ERROR_STATUS
