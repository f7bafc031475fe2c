"""The `lorakit` command: `lorakit <stage> [config.yaml] [key=value ...]`. The only package that reads argv.

One module per group of commands (train.py, data.py, infer.py, serve.py, evaluate.py), all registered on `app.app`.
User mistakes (LorakitError) print on one line without a traceback and exit with status 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

# Each module registers its commands; import order is the order `lorakit --help` lists them, stage by stage.
from lorakit.cli import train, runs, data, evaluate, infer, serve  # noqa: F401,I001
from lorakit.cli.app import app
from lorakit.errors import LorakitError


def main() -> None:
    """Entry point: run the CLI, turning user mistakes into a one-line message and exit status 2."""
    try:
        app(standalone_mode=False)
    except LorakitError as err:
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]{type(err).__name__}[/]: {escape(str(err))}", highlight=False,
                                   soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as err:
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


__all__ = ["app", "main"]
