"""`lorakit webui`: the browser interface, on 127.0.0.1 unless told otherwise (and then only with --auth)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import app, console


@app.command()
def webui(host: Annotated[str, typer.Option(
              help="Address to listen on; a non-loopback one needs --auth.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
          auth: Annotated[Optional[str], typer.Option(
              envvar="LORAKIT_WEBUI_AUTH",
              help="Require a login, as user:password (or set LORAKIT_WEBUI_AUTH).")] = None,
          allow_dir: Annotated[Optional[list[Path]], typer.Option(
              help="Another folder paths may name (besides the working directory, outputs and the cache); "
                   "repeat for several.")] = None,
          max_upload_mb: Annotated[int, typer.Option(help="Largest upload accepted, in MiB.")] = 50,
          language: Annotated[str, typer.Option(help="Interface language at start: en or zh.")] = "en"):
    """Data, training and runs in the browser: `lorakit webui`, then open http://127.0.0.1:7860."""
    from lorakit.config import WebUIConfig
    from lorakit.errors import ConfigError

    try:
        config = WebUIConfig(host=host, port=port, auth=auth or None, allow_dirs=tuple(allow_dir or ()),
                             max_upload_mb=max_upload_mb, language=language)
    except ConfigError as err:
        raise ConfigError(f"{err} (On the command line: --auth user:password, --host, --language.)") from None
    try:
        from lorakit.webui.app import launch
    except ImportError as err:
        raise ConfigError(f"The web UI needs Gradio ({err}). Install it with `pip install 'lorakit[webui]'`.") from None
    console.print(f"lorakit web UI at http://{host}:{port}" + (" (login required)" if auth else ""), markup=False)
    launch(config)
