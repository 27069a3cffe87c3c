"""``automl-vision plugins``: list loaded plugins and what they registered."""

from __future__ import annotations

import argparse
import json

HELP = "list loaded plugins (built-in, installed, --plugin) and what each registered"


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help=HELP, description=HELP + "; broken plugins are shown with their error.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="also load this plugin module")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automl_vision.plugins import PluginManager

    pm = PluginManager().load(args.plugin)
    plugins = [p.as_dict() for p in pm.plugins.values()]
    conflicts = {kind: getattr(pm, kind).conflicts() for kind in ("datasets", "model_families", "metrics")}
    if args.json:
        print(json.dumps({"plugins": plugins, "conflicts": conflicts}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="automl-vision plugins")
    for col in ("plugin", "origin", "distribution", "status", "registered"):
        table.add_column(col)
    for p in plugins:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registered"].items()) or "-"
        hooks = [h for h in p["hooks"] if h.startswith("on_")]
        if hooks:
            registered += ("; " if registered != "-" else "") + "events: " + ", ".join(hooks)
        status = "[green]ok[/]" if p["status"] == "ok" else "[red]broken[/]"
        dist = f"{p['distribution']} {p['version']}" if p["distribution"] else "-"
        table.add_row(p["name"], p["origin"], dist, status, registered)
    console = Console()
    console.print(table)
    for p in plugins:
        for err in p["errors"]:
            console.print(f"[red]broken plugin {p['name']}:[/] {err}", highlight=False)
    for kind, items in conflicts.items():
        for name, owners in items.items():
            console.print(f"[yellow]conflict:[/] {kind} {name!r} is registered by {', '.join(owners)}")
    return 0
