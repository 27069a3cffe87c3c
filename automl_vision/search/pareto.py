"""The Pareto front of a multi-objective search: ``pareto.json`` and a terminal table.

``pareto.json`` in the run directory lists the trials that no other trial beats on
every objective (``study.best_trials``), best first by the first objective::

    {"objectives": ["accuracy", "latency"], "directions": ["maximize", "minimize"],
     "units": {"latency": "ms"},
     "front": [{"number": 3, "model": "resnet10t", "values": {"accuracy": 0.91, "latency": 4.2},
                "params": {...}}, ...]}
"""

from __future__ import annotations

from typing import Any

import optuna

from automl_vision.rundir import PARETO, RunDir, write_json
from automl_vision.search.costs import UNITS



def pareto_front(study: optuna.Study, objectives: list[str], directions: list[str]) -> dict[str, Any]:
    try:
        best = study.best_trials
    except (ValueError, RuntimeError):
        best = []
    sign = -1.0 if directions[0] == "maximize" else 1.0
    front = []
    for t in sorted(best, key=lambda t: (sign * t.values[0], t.number)):
        front.append({
            "number": t.number,
            "model": t.user_attrs.get("model", ""),
            "values": dict(zip(objectives, t.values)),
            "params": t.params,
        })
    return {
        "objectives": objectives,
        "directions": directions,
        "units": {o: UNITS[o] for o in objectives if o in UNITS},
        "front": front,
    }


def report_pareto(run_dir: RunDir, study: optuna.Study, objectives: list[str], directions: list[str]) -> dict[str, Any]:
    """Write ``pareto.json`` and print the front."""
    data = pareto_front(study, objectives, directions)
    write_json(run_dir.path / PARETO, data)
    from rich.table import Table

    from automl_vision.progress import make_console

    table = Table(title=f"Pareto front ({', '.join(f'{o} {d[:3]}' for o, d in zip(objectives, directions))})")
    table.add_column("#", justify="right")
    table.add_column("model")
    for o in objectives:
        table.add_column(o + (f" ({UNITS[o]})" if o in UNITS else ""), justify="right")
    for row in data["front"]:
        cells = [str(row["number"]), row["model"]]
        for o in objectives:
            v = row["values"][o]
            cells.append(f"{v:,.0f}" if o in ("params", "macs") else f"{v:.4f}" if o not in UNITS else f"{v:.2f}")
        table.add_row(*cells)
    console = make_console()
    if data["front"]:
        console.print(table)
    else:
        console.print("Pareto front: no trial finished")
    console.print(f"Pareto front written to {run_dir.path / PARETO}")
    return data
