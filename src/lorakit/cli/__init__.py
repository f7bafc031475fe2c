"""The `lorakit` command: `lorakit <stage> [config.yaml] [key=value ...]`. The only package that reads argv.

One module per group of commands (train.py, data.py, infer.py, serve.py, evaluate.py, webui.py), all registered on `app.app`.
User mistakes (LorakitError) print on one line without a traceback and exit with status 2; so do usage mistakes
(an unknown command or option), after click's usage message.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

# Each module registers its commands; import order is the order `lorakit --help` lists them, stage by stage.
from lorakit.cli import train, runs, data, evaluate, infer, serve, merge, export, webui  # noqa: F401,I001
from lorakit.allocator import restart_with_tcmalloc
from lorakit.cli.app import app
from lorakit.errors import LorakitError

# Settings a flag also makes: library messages name the config key, the command line adds its flag.
_FLAGS = {"data.skip_bad=true": "--skip-bad", "dry_run=true": "--dry-run", "force=true": "--force"}


def command() -> None:
    """The `lorakit` command's entry point (and `python -m lorakit.cli`'s)."""
    main(own_process=True)


def main(own_process: bool = False) -> None:
    """Run the CLI in this process, turning user mistakes into a one-line message and exit status 2.

    `own_process`: this process is the command's own (`lorakit`, `python -m lorakit.cli`), so it may first re-execute
    itself with tcmalloc (allocator.py); a caller that runs the CLI inside its own process keeps that process.
    """
    try:
        if own_process:
            restart_with_tcmalloc()
        status = app(standalone_mode=False)
    except LorakitError as err:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]{type(err).__name__}[/]: {escape(_with_flags(str(err)))}",
                                   highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except _click_exceptions() as err:
        err.show()
        sys.exit(err.exit_code)
    # Outside standalone mode, click returns the code of a `typer.Exit(code)` instead of exiting with it.
    if isinstance(status, int) and not isinstance(status, bool):
        sys.exit(status)


def _with_flags(message: str) -> str:
    for setting, flag in _FLAGS.items():
        message = message.replace(setting, f"{setting} (or {flag})")
    return message


def _click_exceptions() -> tuple[type[Exception], ...]:
    """ClickException of click and of the copy of click that typer ships from 0.2x on (`typer._click`).

    Typer raises the one it was built on, so both are caught: whichever typer is installed, a usage mistake
    shows its usage message and exits with status 2 (click's code for usage errors).
    """
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


__all__ = ["app", "main"]
