"""Warm start: a small portfolio of configurations known to be strong, run first.

The portfolio is data (``portfolio.json`` beside this module): each entry is a
partial set of Optuna parameters. A new study enqueues the entries that fit the
effective search space (``study.enqueue_trial``), in order, before the sampler (TPE)
takes over; an entry's parameter that the space does not allow (a value outside a
restricted range, a family that is not searched) is left to the sampler, and an entry
whose model is not searched at all is skipped. The first trials thus start from
configurations that train well across datasets instead of random ones, which matters
most when the budget allows only a handful of trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import optuna

from automl_vision.plugins import PluginManager
from automl_vision.search.space import Param, explore
from automl_vision.settings import SearchSettings
from automl_vision.types import UsageError

PORTFOLIO_FILE = Path(__file__).with_name("portfolio.json")

# an entry is about one model: when the space does not have its model, skip the entry
STRUCTURAL = ("family", "timm.arch")


def load_portfolio(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The portfolio's entries: ``{"name", "why", "params"}``."""
    return json.loads(Path(path or PORTFOLIO_FILE).read_text(encoding="utf-8"))["entries"]


def fit_entry(params: dict[str, Any], space: dict[str, Param]) -> dict[str, Any] | None:
    """The part of an entry's parameters that the space allows; ``None`` to skip it."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        param = space.get(name)
        if param is None or not param.contains(value):
            if name in STRUCTURAL:
                return None
            continue
        out[name] = value
    return out


def _distributions(study: optuna.Study) -> dict[str, Any]:
    """Each parameter's distribution, as the study's first trial that has it stored it."""
    seen: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            seen.setdefault(name, dist)
    return seen


def study_choices(study: optuna.Study, name: str) -> list[Any] | None:
    """The choices the study searched for categorical parameter ``name`` (None: not searched yet)."""
    dist = _distributions(study).get(name)
    return list(dist.choices) if isinstance(dist, optuna.distributions.CategoricalDistribution) else None


def check_compatible(study: optuna.Study, space: dict[str, Param]) -> None:
    """A resumed study must keep the choices of every categorical parameter (Optuna
    stores one distribution per parameter name); say so before any trial fails."""
    for name, dist in _distributions(study).items():
        param = space.get(name)
        if param is None or param.kind != "categorical":
            continue
        if not isinstance(dist, optuna.distributions.CategoricalDistribution):
            raise UsageError(f"the study already searched {name!r} as a range, now it is a list of choices; "
                             "use the same --space file or a new --out / --study-name")
        if list(dist.choices) != list(param.choices):
            raise UsageError(
                f"the study already searched {name!r} over {list(dist.choices)}, now over {list(param.choices)}; "
                "Optuna cannot change a parameter's choices within a study: use the same --space/--models/"
                "--image-size as before, or a new --out / --study-name"
            )


def warm_start(study: optuna.Study, settings: SearchSettings, pm: PluginManager, families: list[str],
               named: dict[str, list[str]], num_classes: int, in_chans: int, num_train: int, device: str,
               log: Callable[[str], None] = print) -> list[str]:
    """Check the space against the study; enqueue the portfolio into a new study.

    Returns the names of the entries enqueued.
    """
    space = explore(settings, pm, families, named, num_classes, in_chans, num_train, device)
    if study.get_trials(deepcopy=False):
        check_compatible(study, space)
        return []
    if not settings.options.portfolio or settings.options.sampler == "random":
        return []
    names: list[str] = []
    enqueued: list[dict[str, Any]] = []
    for entry in load_portfolio():
        if settings.n_trials and len(names) >= settings.n_trials:
            break  # never more than the trials asked for: they would wait ahead of a re-queued trial
        params = fit_entry(entry["params"], space)
        if params is None or params in enqueued:
            continue
        study.enqueue_trial(params, user_attrs={"portfolio": entry["name"]})
        enqueued.append(params)
        names.append(entry["name"])
    if names:
        log(f"warm start: {len(names)} portfolio configuration(s) first ({', '.join(names)}), then TPE")
    return names
