"""The time budget of a search, resolved once: the regime, when trials stop, what the
final steps get.

A search with ``--time-budget T`` spends it in two phases:

1. **trials** run until ``T - reserve``;
2. the **final steps** (selection, test-time augmentation, calibration, the one test
   evaluation and, in the small-data regime, the final fit) use the reserve.

The **small-data regime** (``--regime small``; ``auto`` picks it for folders of at most
:data:`SMALL_DATA_MAX_IMAGES` labelled images when there is a time budget) trains the
delivered model on *every* labelled image: the search selects a configuration on the
validation split, the test split scores that configuration as the search trained it
(the honest estimate), and then the configuration is trained once more on train +
validation + test for as many epochs as :data:`FINAL_FIT_SHARE` of the budget affords.
Measured on small photo folders (benchmarks/README.md, "small data"): a model that
never sees 30% of a few hundred photos loses to a hand-written loop trained on all of
them, whatever the search found.

Everything that needs the budget reads it from a :class:`BudgetPlan` (stored in
``run.json`` as ``budget``), instead of working it out again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from automl_vision.types import UsageError

REGIMES = ("auto", "small", "standard")
# at most this many labelled images (train + validation + test) -> the small-data regime:
# above it, 70% of the images is already a lot of data and a final fit costs more than it adds
SMALL_DATA_MAX_IMAGES = 6000
# share of the budget kept for the final fit in the small-data regime. Measured on cats-vs-dogs in 3
# minutes: with 0.45 the final fit ran 87 epochs on all the photos where a hand-written loop given the
# whole budget ran 120 and won (0.812 vs 0.834); the selection above it is worth less than those epochs
FINAL_FIT_SHARE = 0.6


def final_steps_seconds(time_budget: float) -> float:
    """Seconds kept for selection, TTA, calibration and the test evaluation (not the final fit)."""
    return min(60.0, max(3.0, 0.04 * time_budget))


def resolve_regime(requested: str, n_images: int, time_budget: float | None) -> tuple[str, str]:
    """(regime, why) for ``--regime`` ``requested`` on ``n_images`` labelled images."""
    if requested not in REGIMES:
        raise UsageError(f"--regime {requested!r}: expected one of {', '.join(REGIMES)}")
    if requested == "small":
        return "small", "--regime small: the delivered model is trained on every labelled image"
    if requested == "standard":
        return "standard", "--regime standard: the delivered model is trained on the train split"
    if not time_budget:
        return "standard", "no --time-budget to plan a final fit in (--regime small asks for one anyway)"
    if n_images > SMALL_DATA_MAX_IMAGES:
        return "standard", (f"{n_images} labelled images (more than {SMALL_DATA_MAX_IMAGES}): the train split is "
                            "large enough that a final fit on every image costs more than it adds")
    return "small", (f"{n_images} labelled images (at most {SMALL_DATA_MAX_IMAGES}): the delivered model is trained "
                     f"on all of them in the last {FINAL_FIT_SHARE:.0%} of the budget")


@dataclass(frozen=True)
class BudgetPlan:
    """The resolved budget of one search session."""

    regime: str  # "small" or "standard"
    why: str
    started: float  # time.time() at the start of the session
    time_budget: float | None  # seconds; None: no limit
    final_steps: float  # seconds kept for selection, TTA, calibration, the test evaluation
    final_fit: float  # seconds kept for the final fit (small-data regime with a budget), else 0
    spent: float = 0.0  # seconds of the budget gone when the plan was made (imports, probe, reading photos)

    @property
    def deadline(self) -> float | None:
        return self.started + self.time_budget if self.time_budget else None

    @property
    def reserve(self) -> float:
        """Seconds before the deadline at which trials stop."""
        return self.final_steps + self.final_fit

    @property
    def search_seconds(self) -> float | None:
        """Seconds the trials have in all (None: no time budget)."""
        return max(0.0, self.time_budget - self.spent - self.reserve) if self.time_budget else None

    @property
    def final_fit_on(self) -> bool:
        return self.regime == "small"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "deadline": self.deadline, "reserve": self.reserve}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "BudgetPlan | None":
        if not isinstance(d, dict):
            return None
        try:
            return cls(regime=str(d["regime"]), why=str(d.get("why", "")), started=float(d["started"]),
                       time_budget=float(d["time_budget"]) if d.get("time_budget") else None,
                       final_steps=float(d.get("final_steps") or 0.0), final_fit=float(d.get("final_fit") or 0.0),
                       spent=float(d.get("spent") or 0.0))
        except (KeyError, TypeError, ValueError):
            return None


def plan_budget(requested_regime: str, n_images: int, time_budget: float | None,
                started: float | None = None, now: float | None = None) -> BudgetPlan:
    """Resolve the regime and split ``time_budget`` between the trials and the final steps.

    ``started``: when the budget began (the process start for the command line); ``now``: when
    the plan is made. What went before (imports, the device probe, reading the photos) is
    spent: the final fit gets :data:`FINAL_FIT_SHARE` of what is left, so that a slow start
    eats into both phases instead of leaving the trials no time at all.
    """
    regime, why = resolve_regime(requested_regime, n_images, time_budget)
    started = time.time() if started is None else started
    if not time_budget:
        return BudgetPlan(regime, why, started, None, 0.0, 0.0)
    steps = final_steps_seconds(time_budget)
    spent = min(max(0.0, now - started), float(time_budget)) if now is not None else 0.0
    fit = FINAL_FIT_SHARE * (time_budget - spent) if regime == "small" else 0.0
    return BudgetPlan(regime, why, started, float(time_budget), steps, fit, spent)


# ------------------------------------------------------------------ resolution
# photo resolutions the search trains at on CPU, cheapest first (a side of S costs (S/64)^2 of 64 px)
CPU_IMAGE_SIZES = (64, 96, 128)
# a resolution above 64 px is chosen when the final fit can still run this many epochs at it (as estimated
# from the device probe). Measured on flowers (3,000 photos of 227 px, 10 minutes, seed 1, evaluation folder):
# at 64 px a final fit of 132 epochs delivered 0.857 (a hand-written loop at 64 px: 0.864), at 96 px (86
# epochs estimated) one of 72 epochs 0.875; the resolution is worth more than the epochs past a few dozen
MIN_EPOCHS_AT_SIZE = 80
# ... and at least this many optimizer steps (batches of REFERENCE_BATCH): a network trained from scratch
# needs steps, whatever the number of photos, and on a few hundred photos 80 epochs are a few hundred steps.
# Measured with benchmarks/bench_recipes.py (the reference CNN trained on every train photo of a set for the
# same time at 64, 96 and 128 px, scored on its evaluation folder; 2-core AMD EPYC, bf16; section 9 of
# benchmarks/README.md; mean differences from 64 px): with 110 s, a 3-minute search's final fit, no higher
# side beat 64 px on 244-400 photos (96 px at 860-1,740 steps: 244 ants/bees -4.6 points over 3 seeds, 300
# cats/dogs 0.0 and 400 flowers -0.2 over 2; 128 px at 330-760 steps: -5.4, -2.0, -1.7); with 360 s, 720
# flowers at 96 px and 3,600 steps +1.9 (128 px at 1,600 steps: +0.1), 244 ants/bees at 96 px and 5,600
# steps -0.7 (one photo), at 128 px and 2,400-2,500 steps -1.6. The other measured gain, 3,000 flowers at
# 96 px in 10 minutes (above), ran 3,400 steps
MIN_STEPS_AT_SIZE = 3000
# the final fit trains two networks, the best model and the runner-up on validation, each for half of its
# time, and delivers their average, when each of the two can still run this many epochs. Measured on the
# 10-minute runs of benchmarks/README.md section 5 (the same run directories, evaluation folders): intel-scenes
# one network of 251 epochs 0.854, two of 125 averaged 0.881; trashnet 371 epochs 0.869, two of 185 0.887;
# flowers 170 epochs 0.868, two of 85 0.865 (two images fewer); cats-vs-dogs 342 epochs 0.899, two of 171
# 0.879 (seven of 356 images fewer, within the 1-2 points one seed's training moves it). The pair's
# validation accuracy before the final fit did not tell these apart (below the best model's on all four).
# Read by search/final/training.py (choose_final_pair), and here by the resolution rule below, which must know
# whether the final fit's steps go to one network or are split between two
MIN_PAIR_EPOCHS = 100
# ... and beyond the pair, fresh networks of the best configuration (from scratch, other seeds) join the final
# fit's average, up to MAX_FINAL_NETWORKS networks in all, while an equal share of its time still gives each
# network of the best configuration MIN_COPY_EPOCHS epochs. Measured with benchmarks/bench_recipes.py
# --networks K (the first portfolio configuration, 64 px, every train photo, K seeds sharing the time, scored
# on the eval folder; sections 17 and 18 of benchmarks/README.md): 360 s on 244 ant/bee photos, one network of
# 1,657 epochs 0.739, two of ~850 0.752, four of ~450 0.791; 8 x 90 s, the mean accuracy of an average of k of
# the 8 networks rose on the ants/bees (336-459 epochs each) from 0.752 (k=1) to 0.763 (2), 0.772 (4), 0.778
# (8), on 300 cat/dog photos (260-306 epochs) from 0.731 to 0.739, 0.746 (4), 0.744 (8); 360 s on 720 flower
# photos, one network of 484 epochs 0.783, two of 233 0.795, four of 123 0.788; on 2,016 trashnet photos one
# of 219 epochs 0.863, two of 107 0.851 (with flip TTA level: 0.861, 0.863). Of 100, 200 and 400 epochs, 200
# picks the best number of networks in all three equal-time comparisons; 400 kept one network on the flowers
# (-1.2 points), 100 would split trashnet (-1.2 points without flip TTA). Read by search/final/training.py
# (choose_final_copies)
MAX_FINAL_NETWORKS = 4
MIN_COPY_EPOCHS = 200
REFERENCE_BATCH = 64
# images per second of the reference CNN's training per image per second of the device probe
# (training/device.py: _measure times a network of the reference CNN's shape at 64 px on random batches, so
# this is what the data pipeline and the real network's details cost). On a 2-core AMD EPYC with AVX512-BF16
# (bf16 + channels-last) the probe measured 2,136-2,280 img/s, and 10-minute final fits of the reference CNN
# at 96 px ran 815-1,312 img/s: 0.86-1.3 of the probe scaled to 96 px (trashnet's 2,016 photos the lowest,
# 244 ant/bee photos the highest). The probe before this one (a 3-conv network at 32 px) needed 0.5 here and
# on two Xeons; taken low, an estimate errs towards 64 px, the side that trains the most steps
PROBE_TO_TRAINING = 0.85


def choose_image_size(native_side: float, n_images: int, time_budget: float | None, regime: str,
                      probe_images_per_second: float | None) -> tuple[int, str]:
    """(side, why): the training resolution of a CPU search of photos.

    64 px unless the budget buys more: in the small-data regime with a time budget, the
    largest of :data:`CPU_IMAGE_SIZES` (never above the photos' own median side) at which
    the final fit, the delivered model's training on every image, still affords
    :data:`MIN_EPOCHS_AT_SIZE` epochs and :data:`MIN_STEPS_AT_SIZE` optimizer steps at the
    measured speed of this machine, the steps counted per network: where each half of the
    final fit still runs :data:`MIN_PAIR_EPOCHS` epochs, the final fit will most likely train
    a pair, each network for half of it. In 3 minutes on 2 cores every folder is trained at
    64 px (more steps, not more pixels); in 10, a few hundred photos at 96 px (a pair),
    ~1,000-2,000 at 128 (one network) and a few thousand at 96.
    """
    base = CPU_IMAGE_SIZES[0]
    if regime != "small" or not time_budget or not probe_images_per_second or n_images <= 0:
        return base, f"{base} px (the CPU default: compute is the limit)"
    seconds = FINAL_FIT_SHARE * float(time_budget)
    per_second = PROBE_TO_TRAINING * float(probe_images_per_second)
    for side in sorted(CPU_IMAGE_SIZES, reverse=True):
        images = seconds * per_second * (base / side) ** 2
        epochs = images / n_images
        # the steps count per network: where each half of the final fit runs MIN_PAIR_EPOCHS, it will most likely
        # train two networks (a pair), each for half. Measured on a 2-core Zen-4 EPYC, 10 minutes, one session,
        # the same seed each (benchmarks/README.md section 13): 720 flower photos at 128 px in a pair of ~1,500
        # steps a network 0.803, at 128 px alone (2,700 steps) 0.798, at 96 px in a pair (2,950-3,360 steps
        # each) 0.816; 244 ant/bee photos at 128 px alone (3,300 steps) 0.791, at 96 px in a pair 0.817 (at 128
        # px in pairs of 580-1,720 steps, an earlier session: 0.778), and at seed 2 0.752 in a pair at 96 px
        # against 0.771 at 128 (an earlier session): level there, ahead on the flowers
        networks = 2 if epochs / 2 >= MIN_PAIR_EPOCHS else 1
        steps = images / networks / REFERENCE_BATCH
        if side <= native_side and side != base and epochs >= MIN_EPOCHS_AT_SIZE and steps >= MIN_STEPS_AT_SIZE:
            form = f"{steps:.0f} steps" if networks == 1 else f"two networks of {steps:.0f} steps each"
            return side, (f"{side} px: the final fit affords about {epochs:.0f} epochs of {n_images} images "
                          f"({form}) at it on this machine (at least {MIN_EPOCHS_AT_SIZE} epochs and "
                          f"{MIN_STEPS_AT_SIZE} steps a network)")
    return base, (f"{base} px (the CPU default: at a higher resolution the final fit would afford fewer than "
                  f"{MIN_EPOCHS_AT_SIZE} epochs of {n_images} images or {MIN_STEPS_AT_SIZE} steps a network)")


class Pace:
    """How long the epochs of one training run take, for cutting its schedule to a deadline.

    The first epoch pays one-off set-up (gathering the split, allocator warm-up, a busy
    moment): it cuts nothing unless the deadline is two such epochs away, and it is left
    out of the pace from the second epoch on. For a schedule that cannot grow back once
    cut (a trial) the pace is the larger of the median of the epochs so far and the median
    of the last three, so one slow epoch never cuts a schedule for good while a machine
    that stays busy does. Measured on cats-vs-dogs, 10 minutes: a final fit planned for 408
    epochs was cut to 149 by its slow first epoch, and the search ended 4 minutes early.

    With ``follow`` (a schedule re-planned after every epoch, both ways: the final fit) the
    pace is the median of the last :data:`FOLLOW_EPOCHS` epochs, so the schedule follows a
    machine that speeds up as closely as one that slows down.
    """

    FOLLOW_EPOCHS = 5

    def __init__(self, follow: bool = False) -> None:
        self.seconds: list[float] = []
        self.follow = follow

    def epochs_that_fit(self, epochs_done: int, epoch_seconds: float, left: float, planned: int) -> int:
        """The schedule's length after ``epochs_done`` epochs, the last of ``epoch_seconds``,
        with ``left`` seconds to the deadline: ``planned`` or fewer, never fewer than done."""
        import statistics

        self.seconds.append(epoch_seconds)
        if len(self.seconds) == 1 and left > 2 * epoch_seconds:
            return planned  # the set-up epoch alone says little: the second one decides
        timed = self.seconds[1:] or self.seconds
        if self.follow:
            pace = max(statistics.median(timed[-self.FOLLOW_EPOCHS:]), 1e-3)
        else:
            # the recent epochs count too: a machine that gets busy mid-run slows every epoch from then on,
            # and the median of all would lag until the deadline passed (a final fit planned for 822 epochs
            # at 128 px ran past it under a load of 3 on 2 cores and was thrown away)
            pace = max(statistics.median(timed), statistics.median(timed[-3:]), 1e-3)
        return max(epochs_done, min(planned, epochs_done + int(max(0.0, left) // pace)))
