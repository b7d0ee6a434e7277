"""`muxplan models`: the model and GPU catalogs."""
from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="List and show catalog models and GPUs.", no_args_is_help=True)


@app.command("list")
def list_models(
    gpus: Annotated[bool, typer.Option("--gpus", help="List GPUs instead of models.")] = False,
) -> None:
    """List catalog models (or GPUs) with their derived sizes."""
    from muxplan.catalog import gpu_catalog, model_catalog
    from muxplan.render import console, gpus_table, models_table

    table = gpus_table(list(gpu_catalog().values())) if gpus else models_table(list(model_catalog().values()))
    console().print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Catalog model or GPU name, or a path to a config.json.")],
) -> None:
    """Show one model's architecture and derived numbers (or one GPU's datasheet)."""
    from muxplan.catalog import get_model, gpu_catalog
    from muxplan.render import console, gpus_table, model_detail_table

    if name in gpu_catalog():
        console().print(gpus_table([gpu_catalog()[name]]))
    else:
        console().print(model_detail_table(get_model(name)))
