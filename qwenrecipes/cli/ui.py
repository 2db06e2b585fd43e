"""`qwenrecipes ui`: serve the local web app (qwenrecipes.ui; needs the `qwenrecipes[ui]` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from qwenrecipes.errors import QwenRecipesError


@click.command("ui")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback lets others on the network reach the page "
                   "(writes and runs still need the token).")
@click.option("--project", "project", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder whose recipes, data and runs/ the page works on; no file outside it "
                                      "is read or written.")
def ui_command(port: int, host: str, project: Path) -> None:
    """Serve a local page: the recipe as a form, every engine's files side by side, token view, live runs."""
    try:
        from qwenrecipes.ui.app import serve
        from qwenrecipes.ui.safety import LOCAL_HOSTS, new_token
    except ImportError as exc:
        raise QwenRecipesError(f"qwenrecipes ui needs the ui extra ({exc.name} is missing): "
                               "pip install 'qwenrecipes[ui]'") from None
    if host not in LOCAL_HOSTS:
        click.secho(f"warning: listening on {host}: the page is reachable from other machines", fg="yellow", err=True)

    def ready(url: str) -> None:
        click.echo(f"qwenrecipes ui for {project.resolve()}")
        click.echo(f"open {url}")
        click.echo("the token in that URL is needed to save files and start runs (new at every launch); Ctrl-C stops")

    serve(project, host=host, port=port, token=new_token(), on_ready=ready)


COMMANDS = [ui_command]
