"""What every ``backplane`` command prints with: rich consoles and tables, JSON, and the
options several commands share."""

from __future__ import annotations

import json
from typing import Any

import click


def console(stderr: bool = False) -> Any:
    """A rich console (on stderr for progress, so that stdout stays the data)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Any:
    """A rich table of ``rows``; cells are plain text, never rich markup."""
    from rich.table import Table
    from rich.text import Text

    out = Table(title=title, title_justify="left")
    for c in columns:
        out.add_column(c)
    for r in rows:  # (cells as Text: a "[" in a model's name is no rich markup)
        out.add_row(*[Text("" if v is None else str(v)) for v in r])
    return out


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON (what ``--json`` prints)."""
    click.echo(json.dumps(data, indent=2, default=str))


#: ``--json``: print the data the API returns instead of tables.
json_option = click.option("--json", "as_json", is_flag=True, help="Print the data as JSON.")
#: ``--device/-d``: device ids or backend names, in order.
device_option = click.option("--device", "-d", "devices", multiple=True, metavar="D",
                             help="Device id (reference:0) or backend name; repeatable, in order.")
