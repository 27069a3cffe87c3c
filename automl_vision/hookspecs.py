"""The plugin contract of automl-vision.

Every hook a plugin can implement is specified here, and the docstrings below are the
reference for plugin authors (``docs/plugins.md`` is generated from them and a test
checks that they agree).

Two kinds of hook exist:

* ``register_<kind>(register)`` hooks are called once, when the plugin manager loads.
  The core passes a ``register`` callback; a plugin calls it once for every thing it
  adds, so one plugin can add many datasets, families or metrics. Return values are
  ignored. Every implementation is called (plain collection semantics, no
  ``firstresult``).
* ``on_<event>(...)`` hooks are notifications sent while a search runs. Every
  implementation is called; return values are ignored. An exception raised by an
  event hook is logged with the plugin's name and never stops the search.

Implement a hook with the :data:`automl_vision.hookimpl` marker::

    from automl_vision import hookimpl

    @hookimpl
    def register_metrics(register):
        register(Metric(name="error_rate", direction="minimize", fn=error_rate))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from automl_vision.types import DatasetSource, Metric, ModelFamily

PROJECT_NAME = "automl_vision"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------
# Registration hooks: called once when plugins are loaded
# --------------------------------------------------------------------------------------


@hookspec
def register_datasets(register: Callable[["DatasetSource"], None]) -> None:
    """Register dataset sources.

    A dataset source turns a location string given on the command line (a folder, a
    CSV manifest, ``digits:``, ``npz:/path/file.npz``) into labelled samples. Call
    ``register(source)`` once per :class:`automl_vision.types.DatasetSource`.

    A location of the form ``NAME:REST`` is sent to the source called ``NAME``; any other
    location is offered to each source's ``detect(location)`` in registration order and
    the first one that answers ``True`` loads it.

    :param register: callback taking a :class:`~automl_vision.types.DatasetSource`.
    """


@hookspec
def register_model_families(register: Callable[["ModelFamily"], None]) -> None:
    """Register model families with their search space.

    A model family is asked for its hyperparameters through the Optuna trial
    (``family.suggest(trial, context)``, define-by-run, so conditional parameters exist
    only where they apply), then builds an ``nn.Module`` with
    ``family.build(params, in_chans=..., image_size=..., num_classes=...)``. The module
    must map a float batch ``(N, in_chans, H, W)`` to logits ``(N, num_classes)``.
    Call ``register(family)`` once per :class:`automl_vision.types.ModelFamily`.

    A family whose ``build`` raises fails that one trial only, with the error as the
    trial's reason.

    :param register: callback taking a :class:`~automl_vision.types.ModelFamily`.
    """


@hookspec
def register_metrics(register: Callable[["Metric"], None]) -> None:
    """Register evaluation metrics.

    A metric has a name, a direction (``"maximize"`` or ``"minimize"``) and a function
    ``fn(y_true, probs) -> float`` of integer labels ``(N,)`` and class probabilities
    ``(N, K)``. Every registered metric is computed for every trial on the validation
    split, shows in the leaderboard, and can be chosen as the objective with
    ``--metric NAME``. Call ``register(metric)`` once per
    :class:`automl_vision.types.Metric`.

    :param register: callback taking a :class:`~automl_vision.types.Metric`.
    """


# --------------------------------------------------------------------------------------
# Search events: notifications for integrations (tracking, alerts, ...)
# --------------------------------------------------------------------------------------


@hookspec
def on_search_start(run_dir: str, settings: dict[str, Any]) -> None:
    """Called when a search (or a worker joining one) starts, before the first trial.

    :param run_dir: path of the run directory.
    :param settings: the search settings as stored in ``run.json`` (plain JSON types).
    """


@hookspec
def on_trial_end(run_dir: str, trial: "optuna.trial.FrozenTrial", record: dict[str, Any]) -> None:
    """Called after every trial, whatever its end (complete, pruned or failed).

    :param run_dir: path of the run directory.
    :param trial: the Optuna trial as stored in the study.
    :param record: the trial's summary as written to ``trials/<n>/status.json``: number,
        state, reason, model, params, epochs, seconds and the validation metrics.
    """


@hookspec
def on_search_end(run_dir: str, study: "optuna.Study", summary: dict[str, Any]) -> None:
    """Called once when the search has finished and the final report is written.

    :param run_dir: path of the run directory.
    :param study: the Optuna study.
    :param summary: the content of ``final/report.json`` (best trial, test metrics,
        ensemble, deliverable).
    """
