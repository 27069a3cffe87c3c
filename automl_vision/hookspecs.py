"""The plugin contract of automl-vision.

Every hook a plugin can implement is specified here, and the docstrings below are the
reference for plugin authors: ``docs/hooks.md`` is generated from them by
``docs/gen_hooks.py``, and ``tests/test_docs.py`` fails when the two disagree.

Two kinds of hook exist:

* ``register_<kind>(register)`` hooks are called once per plugin, when the plugin
  manager loads it. The core passes a ``register`` callback and the plugin calls it
  once for every thing it adds, so one plugin can add many datasets, families or
  metrics. Every implementation is called (plain collection semantics, no
  ``firstresult``): return values are not used, and returning something instead of
  calling ``register`` is reported as a mistake.
* ``on_<event>(...)`` hooks are notifications sent while a search runs, called
  through pluggy: every implementation is called in pluggy's order (``tryfirst``
  ones first, ``trylast`` ones last, the others last-loaded first), and hook wrappers
  (``@hookimpl(wrapper=True)``, a generator that yields once) run around all of them.
  Return values are ignored. An exception raised by an event hook is logged once with
  the plugin's name and never stops the search or the other plugins' implementations.

No hook is ``firstresult``: choosing between plugins (which dataset source reads a
location, which family builds a trial's model) is done by name, so that the choice is
visible and a clash between two plugins is an error instead of an accident of load
order.

Implement a hook with the :data:`automl_vision.hookimpl` marker; the function's
argument names must be the hook's (you may leave arguments out)::

    from automl_vision import hookimpl
    from automl_vision.types import Metric

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

    A location of the form ``NAME:REST`` is sent to the source called ``NAME``, which
    receives ``REST``; any other location is offered to each source's
    ``detect(location)`` in load order (built-ins, installed plugins, ``--plugin``
    modules) and the first one that answers ``True`` receives the whole location.

    ``source.load(location)`` returns a :class:`automl_vision.types.Dataset`: class
    names and :class:`automl_vision.types.Sample` objects, each with a label index and
    either an image file ``path`` or a ``uint8`` ``array`` (``(H, W)`` or
    ``(H, W, C)``), and optionally a fixed ``split``. For a location that cannot be
    used it raises :class:`automl_vision.types.DataError` with a message saying what
    is wrong and what to do; the user sees it as is. Any other exception is reported
    with the source's and the plugin's names.

    Naming: two or more characters of ``a-z 0-9 _ -``, starting with a letter.

    Args:
        register: callback taking one :class:`automl_vision.types.DatasetSource`.
    """


@hookspec
def register_model_families(register: Callable[["ModelFamily"], None]) -> None:
    """Register model families with their search space.

    A model family is asked for its hyperparameters through the Optuna trial
    (``family.suggest(trial, context)``, define-by-run, so conditional parameters exist
    only where they apply) and returns them as a dict of JSON values. It then builds an
    ``nn.Module`` with ``family.build(params, in_chans=..., image_size=...,
    num_classes=...)``. The module must map a float batch ``(N, in_chans, H, W)`` to
    logits ``(N, num_classes)``. Call ``register(family)`` once per
    :class:`automl_vision.types.ModelFamily`.

    Name every parameter ``"<family>.<name>"`` (e.g. ``"mixer.depth"``): the trial is
    shared with the training hyperparameters and with the other families. The
    :class:`automl_vision.types.SearchContext` tells the family the number of classes,
    input channels, image size, training set size and device, so the space can adapt
    (e.g. a patch size that divides the image size).

    A family whose ``suggest`` or ``build`` raises, or whose module fails in training,
    fails that one trial only, with the error as the trial's reason in the
    leaderboard; the search goes on with other trials.

    Naming: ``a-z 0-9 _ -``, starting with a letter; the name is what users type in
    ``--models`` and what the leaderboard's ``family`` column shows.

    Args:
        register: callback taking one :class:`automl_vision.types.ModelFamily`.
    """


@hookspec
def register_metrics(register: Callable[["Metric"], None]) -> None:
    """Register evaluation metrics.

    A metric has a name, a direction (``"maximize"`` or ``"minimize"``) and a function
    ``fn(y_true, probs) -> float`` of integer labels ``(N,)`` and class probabilities
    ``(N, K)`` whose rows sum to one. Every registered metric is computed for every
    trial on the validation split and shows in the leaderboard as ``val_<name>``; any
    of them can be chosen as the objective with ``--metric NAME``. Call
    ``register(metric)`` once per :class:`automl_vision.types.Metric`.

    A metric function that raises is left out of that trial's metrics (and logged
    with the plugin's name), unless it is the objective, which then fails the trial.
    Set ``min_classes`` for metrics that only make sense with enough classes.

    Naming: ``a-z 0-9 _``, starting with a letter; ``params``, ``latency``, ``macs``
    and ``value`` are reserved.

    Args:
        register: callback taking one :class:`automl_vision.types.Metric`.
    """


# --------------------------------------------------------------------------------------
# Search events: notifications for integrations (tracking, alerts, ...)
# --------------------------------------------------------------------------------------


@hookspec
def on_search_start(run_dir: str, settings: dict[str, Any]) -> None:
    """Called when a search (or a worker joining one) starts, before the first trial.

    Args:
        run_dir: path of the run directory.
        settings: the search settings as stored in ``run.json`` (plain JSON types:
            ``data``, ``metric``, ``models``, ``time_budget``, ``n_trials``, ``seed``,
            ...). Read it; changing it has no effect.
    """


@hookspec
def on_trial_end(run_dir: str, trial: "optuna.trial.FrozenTrial", record: dict[str, Any]) -> None:
    """Called after every trial, whatever its end (complete, pruned or failed).

    The trial's files in ``trials/<number>/`` and the leaderboard are written before
    this is called, so a tracking plugin can copy or upload them.

    Args:
        run_dir: path of the run directory.
        trial: the Optuna trial as stored in the study (``number``, ``state``,
            ``params``, ``value``, ``user_attrs``).
        record: the trial's summary as written to ``trials/<n>/status.json``:
            ``number``, ``state`` (``COMPLETE``, ``PRUNED`` or ``FAIL``), ``reason``,
            ``model``, ``family``, ``epochs``, ``seconds``, ``value`` and ``metrics``
            (validation metric name -> value).
    """


@hookspec
def on_epoch_end(run_dir: str, trial_number: int, epoch: int, epochs: int, record: dict[str, Any]) -> None:
    """Called after every epoch of every trial, in the process that trains it: learning
    curves for a tracking plugin, live.

    Keep it quick (it runs between two epochs); an exception is logged once and the
    trial goes on.

    Args:
        run_dir: path of the run directory.
        trial_number: the trial's number.
        epoch: the epoch just finished (1-based).
        epochs: the epochs planned for the trial now (the time budget may change it).
        record: the epoch's row of ``trials/<n>/history.json``: ``epoch``, ``train_loss``,
            ``lr``, ``train_seconds``, ``eval_seconds``, ``images_per_second`` and
            ``val_<metric>`` for every metric; ``skipped_steps`` too when steps were
            left out for non-finite gradients.
    """


@hookspec
def on_search_end(run_dir: str, study: "optuna.Study", summary: dict[str, Any]) -> None:
    """Called once when the search has finished and the final report is written.

    A plugin that writes files of its own next to the run can use
    ``automl_vision.rundir.atomic_write_text(path, text)`` and
    ``automl_vision.rundir.write_json(path, obj)``: they replace a file atomically and are
    part of the plugin API.

    Args:
        run_dir: path of the run directory.
        study: the Optuna study.
        summary: the content of ``final/report.json``: its keys and types are listed
            in docs/run-directory.md ("final/report.json"); ``best_trial`` is an int,
            and a search that delivered nothing has an ``error`` key instead.
    """
