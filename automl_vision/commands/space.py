"""``automl-vision space show``: print the effective search space."""

from __future__ import annotations

import argparse

from automl_vision.commands import add_plugin_option

HELP = "show the effective search space (with --space, --models, --preset applied)"


def add_parser(sub) -> None:
    p = sub.add_parser("space", help=HELP, description=HELP + ". Parameter names are the keys of a --space file.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="print every parameter, its values and when it applies",
                              description="Print every parameter of the search space, its values and the "
                                          "condition under which it exists.")
    show.add_argument("--space", metavar="FILE", help="YAML search space file to apply")
    show.add_argument("--models", metavar="LIST", help="as for search: families and/or timm names or patterns")
    show.add_argument("--image-size", metavar="PX[,PX...]", help="as for search (default: 64)")
    show.add_argument("--preset", choices=["fast", "balanced", "best"], default="balanced",
                      help="search preset: its zoo and augmentation presets (default: balanced)")
    add_plugin_option(show)
    show.add_argument("--num-train", type=int, default=1000, metavar="N",
                      help="training images assumed (caps the batch size; default: 1000)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.add_argument("--portfolio", action="store_true", help="also list the warm-start entries that fit")
    p.set_defaults(func=run, action=None)


def run(args: argparse.Namespace) -> int:
    import json

    from automl_vision.plugins import get_plugin_manager
    from automl_vision.search import space_file
    from automl_vision.search.space import explore, families_and_models
    from automl_vision.settings import parse_sizes, settings_from_options
    from automl_vision.types import UsageError

    if args.action != "show":
        raise UsageError("choose an action: automl-vision space show [--space FILE] [--models LIST]")
    try:
        sizes = parse_sizes(args.image_size) if args.image_size else [64]
    except UsageError as exc:
        raise UsageError(f"--image-size: {exc}") from None
    settings = settings_from_options(".", out=".", models=args.models, image_size=sizes, preset=args.preset,
                                     space=args.space, plugin=args.plugin, n_trials=1)
    settings.options.image_size_given = bool(args.image_size)
    pm = get_plugin_manager(settings.plugins)
    families, named = families_and_models(settings, pm)
    space_file.apply(settings, pm)
    params = explore(settings, pm, families, named, num_train=args.num_train)
    entries = []
    if args.portfolio:
        from automl_vision.search.portfolio import fit_entry, load_portfolio

        for entry in load_portfolio():
            fitted = fit_entry(entry["params"], params)
            if fitted is not None:
                entries.append({"name": entry["name"], "params": fitted})
    if args.json:
        out = {"parameters": {n: p.as_dict() for n, p in params.items()}}
        if args.portfolio:
            out["portfolio"] = entries
        print(json.dumps(out, indent=2))
        return 0
    from rich.table import Table

    from automl_vision.progress import make_console

    title = "Search space" + (f" ({settings.options.space_file} applied)" if args.space else "")
    table = Table(title=title)
    table.add_column("parameter", no_wrap=True)
    table.add_column("kind")
    table.add_column("values")
    table.add_column("only when")
    for name, p in params.items():
        kind = "fixed" if (p.kind == "categorical" and len(p.choices) == 1) or p.low == p.high is not None else p.kind
        cond = " and ".join(f"{c}={'|'.join(map(_show, v))}" for c, v in p.condition.items())
        table.add_row(name, kind, p.describe(), cond)
    console = make_console()
    console.print(table)
    if args.portfolio:
        console.print(f"warm start: {len(entries)} portfolio entries fit: {', '.join(e['name'] for e in entries) or 'none'}")
    return 0


def _show(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
