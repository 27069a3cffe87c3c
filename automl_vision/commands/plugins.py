"""``automl-vision plugins``: list loaded plugins and what they registered."""

from __future__ import annotations

import argparse
import json

HELP = "list loaded plugins (built-in, installed, --plugin) and what each registered"


def _preference(text: str) -> tuple[str, str]:
    name, sep, plugin = text.partition("=")
    if not sep or not name.strip() or not plugin.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PLUGIN, got {text!r}")
    return name.strip(), plugin.strip()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plugins",
        help=HELP,
        description=HELP + ". Broken plugins are shown with what is wrong, and names registered by more than "
        "one plugin (conflicts) with the plugins involved. Exit status 0 even when a plugin is broken.",
    )
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: {plugins: [...], conflicts: {...}, hooks: [...]}")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="also load this plugin module or .py file (repeatable), as search --plugin does")
    p.add_argument("--prefer", action="append", default=[], type=_preference, metavar="NAME=PLUGIN",
                   help="show conflicts as resolved by this pick, as search --prefer does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from automl_vision.plugins import _HOOK_NAMES, PluginManager

    if args.plugin and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    pm = PluginManager().load(args.plugin)
    pm.apply_preferences(dict(args.prefer))
    plugins = [p.as_dict() for p in pm.plugins.values()]
    conflicts = {}
    for kind in ("datasets", "model_families", "metrics"):
        registry = getattr(pm, kind)
        conflicts[kind] = {
            name: {"plugins": owners, "preferred": registry.preferred.get(name)}
            for name, owners in registry.conflicts().items()
        }
    # what each usable name resolves to (conflicting names only once the user picked one)
    registered: dict[str, dict[str, dict]] = {}
    for kind in ("datasets", "model_families", "metrics"):
        registry = getattr(pm, kind)
        registered[kind] = {}
        for name in registry:
            obj = registry.get(name)
            item = {"plugin": registry.plugin_of(name), "description": obj.description}
            if kind == "metrics":
                item["direction"] = obj.direction
            registered[kind][name] = item
    if args.json:
        print(json.dumps({"plugins": plugins, "registered": registered, "conflicts": conflicts,
                          "hooks": sorted(_HOOK_NAMES)}, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)  # long errors stay one line, for grep
    status_text = {"ok": "[green]ok[/]", "broken": "[bold red]BROKEN[/]", "duplicate": "[yellow]duplicate[/]"}
    for p in plugins:
        dist = f"{p['distribution']} {p['version'] or ''}".strip() if p["distribution"] else "-"
        console.print(f"[bold]{escape(p['name'])}[/]  {p['origin']}  {escape(dist)}  {status_text[p['status']]}")
        if p["duplicate_of"]:
            console.print(f"    the same module as plugin {escape(p['duplicate_of'])}, already loaded: it is used once")
        for kind, names in p["registered"].items():
            console.print(f"    {kind.replace('_', ' ')}: {escape(', '.join(names))}")
            for name in names:  # descriptions, where the plugin gave one and the name resolves to it
                item = registered.get(kind, {}).get(name)
                if item and item["description"] and item["plugin"] == p["name"]:
                    console.print(f"      {escape(name)}: {escape(item['description'])}", style="dim")
        events = [h for h in p["hooks"] if h.startswith("on_")]
        if events:
            console.print(f"    events: {', '.join(events)}")
        for err in p["errors"]:
            console.print(f"    [red]error:[/] {escape(err)}")
    for kind, items in conflicts.items():
        for name, c in items.items():
            owners = " and ".join(c["plugins"])
            if c["preferred"]:
                console.print(f"[yellow]conflict:[/] {kind.replace('_', ' ')} {name!r} is registered by {owners}; "
                              f"using {c['preferred']} (--prefer)")
            else:
                console.print(f"[yellow]conflict:[/] {kind.replace('_', ' ')} {name!r} is registered by {owners}; "
                              f"not used until you pick one with --prefer {name}=PLUGIN")
    n_broken = sum(p["status"] == "broken" for p in plugins)
    console.print(f"{len(plugins)} plugins, {n_broken} broken")
    return 0
