"""Under a time budget, cheap trials are stretched to fill their share; the pruner compares
trials at the same share of their own schedules and waits for a yardstick."""

from __future__ import annotations

import optuna
import torch

from automl_vision.search.objective import schedule_step
from automl_vision.search.study import AfterStartup, make_pruner
from automl_vision.settings import SearchSettings, trial_seconds
from automl_vision.training.device import choose
from automl_vision.training.trainer import STRETCH_BY_EPOCH, TensorData, TrialConfig, train

PARAMS = {"cnn.block": "plain", "cnn.stages": 1, "cnn.blocks": 1, "cnn.width": 8, "cnn.kernel": 3,
          "cnn.norm": "batch", "cnn.act": "relu", "cnn.dropout": 0.0, "cnn.pool": "avg"}


def _train(plan, epochs=4, **kwargs):
    from automl_vision.builtin.custom_cnn import build

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (32, 3, 12, 12), generator=g, dtype=torch.uint8)
    y = torch.arange(32) % 2
    data = TensorData(x, y, x, y, mean=[0.5] * 3, std=[0.25] * 3, num_classes=2)
    cfg = TrialConfig(family="cnn", model_params=PARAMS, image_size=12, batch_size=16, lr=1e-2, epochs=epochs)
    lrs, asked = [], []

    def ask(done, secs):
        asked.append(done)
        return plan(done)

    result = train(build(PARAMS, 3, 12, 2), cfg, data, choose("cpu", "fp32", "off"),
                   on_epoch=lambda e, p, rec: lrs.append(rec["lr"]), plan=ask, **kwargs)
    return result, lrs, cfg


def test_a_trial_is_stretched_early_and_its_schedule_anneals_at_the_new_end():
    result, lrs, cfg = _train(lambda done: 9)
    assert result.epochs_run == 9
    assert result.grown == "epochs set from 4 to 9 by the time budget"
    assert result.stopped_early is None
    assert lrs[-1] < 0.01 * cfg.lr  # the cosine reached its end at epoch 9, not at 4
    assert max(lrs) > 0.5 * cfg.lr


def test_a_trial_is_not_stretched_once_its_schedule_is_under_way():
    # growth offered only after epoch STRETCH_BY_EPOCH + 1: the trial keeps its 4 epochs
    result, _lrs, _cfg = _train(lambda done: 9 if done > STRETCH_BY_EPOCH else 4)
    assert result.epochs_run == 4
    assert result.grown is None


def test_a_schedule_cut_by_a_slow_early_epoch_grows_back_within_its_growth_window():
    # a final fit: cut from 10 to 6 after epoch 2 (a slow epoch), offered 12 from epoch 4 on; growth
    # is accepted up to epoch grow_until=5, so the run ends at 12 with its cosine annealed there
    result, lrs, cfg = _train(lambda done: 6 if done <= 3 else 12, epochs=10, grow_until=5)
    assert result.epochs_run == 12
    assert result.grown == "epochs set from 10 to 12 by the time budget"
    assert result.stopped_early is None
    assert lrs[-1] < 0.01 * cfg.lr
    # the same offer after the window (from epoch 6): the cut stands
    result, lrs, _cfg = _train(lambda done: 6 if done <= 5 else 12, epochs=10, grow_until=5)
    assert result.epochs_run == 6
    assert result.grown is None
    assert result.stopped_early == "epochs cut from 10 to 6 to fit the time budget"
    # growth back that stays under the schedule first planned is still a cut, from the plan
    result, _lrs, _cfg = _train(lambda done: 6 if done <= 3 else 8, epochs=10, grow_until=5)
    assert result.epochs_run == 8
    assert result.grown is None
    assert result.stopped_early == "epochs cut from 10 to 8 to fit the time budget"


def test_a_re_planned_schedule_carries_its_learning_rate_on_without_a_jump():
    # a final fit re-planned after every epoch: cut from 10 to 6 after epoch 1, grown to 12 after epoch 4
    # (growth allowed throughout); the cosine never jumps back up and ends annealed at epoch 12
    result, lrs, cfg = _train(lambda done: 6 if done <= 3 else 12, epochs=10, grow_until=1000)
    assert result.epochs_run == 12
    assert result.grown == "epochs set from 10 to 12 by the time budget"
    peak = lrs.index(max(lrs))
    after = lrs[peak:]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:])), lrs  # past the warm-up it only decays
    assert lrs[-1] < 0.01 * cfg.lr
    # the epoch after the cut: the rate falls faster from there, but from where it stood
    _res, same, _cfg = _train(lambda done: 10, epochs=10)
    assert lrs[0] == same[0] and 0.5 * same[1] < lrs[1] < same[1], (lrs, same)


def test_the_schedule_position_follows_each_re_plan_to_its_end():
    from automl_vision.training.trainer import _Schedule

    plan = {"total": 100}
    sched = _Schedule("cosine", plan, warmup=0.05)
    unchanged = _Schedule("cosine", {"total": 100}, warmup=0.05)
    assert [sched(s) for s in range(0, 40)] == [unchanged(s) for s in range(0, 40)]
    plan["total"] = 60  # cut at step 40: the 40 % done stays done, the rest fits in 20 steps
    assert abs(sched.progress(40) - 0.40) < 0.02 and sched.progress(60) == 1.0
    plan["total"] = 150  # grown at step 50
    p50 = sched.progress(50)
    assert sched.progress(100) < 1.0 and sched.progress(150) == 1.0
    assert abs(sched.progress(100) - (p50 + (1 - p50) * 50 / 100)) < 1e-9
    assert sched(150) < 1e-3


def test_trial_share_of_the_budget():
    s = SearchSettings(data="d", run_dir="r", study_name="s", time_budget=600.0)
    assert trial_seconds(s) == 0.3 * 600  # balanced: 30% of the budget
    s.n_trials = 2
    assert trial_seconds(s) == 0.85 / 2 * 600  # two trials asked for: each may fill its half
    s.max_epochs = 10
    assert trial_seconds(s) is None  # an explicit --max-epochs is kept
    assert trial_seconds(SearchSettings(data="d", run_dir="r", study_name="s", n_trials=5)) is None


def test_schedule_step_is_the_percent_of_the_trials_own_schedule():
    assert [schedule_step(e, 20) for e in (1, 2, 10, 20)] == [5, 10, 50, 100]
    assert [schedule_step(e, 60) for e in (6, 18, 54, 60)] == [10, 30, 90, 100]
    steps = [schedule_step(e, 150) for e in range(1, 151)]
    assert steps == sorted(steps) and steps[-1] == 100


def _study_with(values_at_rung: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=make_pruner("sha", 20))
    for v in values_at_rung:
        t = study.ask()
        t.report(v, 10)
        t.should_prune()  # successive halving records the trial at its rung here
        t.report(v, 100)
        study.tell(t, v)
    return study


def test_sha_waits_for_three_completed_trials_before_pruning():
    assert isinstance(make_pruner("hyperband", 20), AfterStartup)
    # one completed trial at 0.9: a second trial at 0.5 at the first rung (10%) is kept
    study = _study_with([0.9])
    t = study.ask()
    t.report(0.5, 10)
    assert not t.should_prune()
    # three completed trials: the same score at the same rung is pruned
    study = _study_with([0.9, 0.85, 0.8])
    t = study.ask()
    t.report(0.5, 10)
    assert t.should_prune()


def test_a_queued_trial_the_budget_left_unstarted_says_so_in_the_leaderboard(tmp_path):
    from automl_vision import leaderboard
    from automl_vision.rundir import RunDir

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"family": "cnn"}, user_attrs={"portfolio": "cnn-plain-4stage-light"})
    df = leaderboard.build(RunDir(tmp_path / "run"), study)
    row = df.iloc[0]
    assert row["state"] == "WAITING"
    assert row["model"] == "portfolio: cnn-plain-4stage-light"
    assert "not started yet" in row["reason"]


def test_configurations_the_deadline_left_unstarted_are_one_line_under_the_terminal_leaderboard():
    import io

    import pandas as pd
    from rich.console import Console

    from automl_vision import leaderboard

    df = pd.DataFrame([
        {"number": 0, "state": "COMPLETE", "model": "cnn-plain", "value": 0.81, "epochs": 70, "seconds": 60.0},
        {"number": 1, "state": "PRUNED", "model": "cnn-res", "value": 0.6, "epochs": 1, "seconds": 2.0,
         "reason": "pruned after epoch 1 (accuracy 0.6000)"},
        {"number": 2, "state": "PRUNED", "model": "regnetx_002", "reason": "not started: about 4s needed for 2 epochs, 3s left"},
        {"number": 3, "state": "PRUNED", "model": "convnext_atto", "reason": "not started: about 9s needed for 2 epochs, 2s left"},
    ])
    out = io.StringIO()
    leaderboard.render(df, "accuracy", "maximize", console=Console(file=out, width=200))
    text = out.getvalue()
    assert "cnn-plain" in text and "cnn-res" in text and "early-stopped by the pruner" in text
    assert "regnetx_002" not in text and "convnext_atto" not in text
    assert "2 configuration(s) sampled near the end were not started" in text and "#2, #3" in text
