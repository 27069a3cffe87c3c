"""Training recipes at equal wall-clock time: which change to one configuration pays on a set?

The question behind it (issue 18): once the search has picked a configuration, what
should the final fit's minutes go to on a small set: stronger augmentation, weight
averaging, a wider network, a higher resolution? Each *recipe* is a portfolio entry
(``automl_vision/search/portfolio.json``, the first one unless ``--entry``) with some
parameters overridden, in the names of ``automl-vision space show``; the configuration is
built by the search's own sampler (``search.space.sample`` on an ``optuna.trial.FixedTrial``),
so a recipe trains exactly as that trial would.

For every recipe and seed: every photo of ``<set>/train`` and ``<set>/eval`` decoded once
with the engine's decoder (``automl_vision.data.images.decode``, square, as the cache
does; the train photos at the side the search decodes them at, ``training.augment.train_side``,
unless the recipe's ``cache`` says otherwise: before section 47 of benchmarks/README.md at the
network's side), then the engine's trainer (``automl_vision.training.trainer.train``, on the path
``training.device.choose`` picks) trains on *all* the train photos for ``--seconds`` of
wall-clock time (the schedule re-planned after every epoch so that it ends on time, as a
final fit's does), the eval folder standing in for the validation split; scored once at
the end on every eval photo, plain and with flip test-time augmentation. Recipes run one
after another, never in parallel; a seed changes the initial weights, batches and
augmentation draws.

``--quick`` is the smoke setting: a tiny generated set, 3 s a recipe, one seed; results go
to ``results/quick/``.

Examples::

    .venv/bin/python benchmarks/bench_recipes.py --data /work/bench-data/hymenoptera --seconds 240
    .venv/bin/python benchmarks/bench_recipes.py --data SET --recipes base,s160 --seeds 0,1 --image-size 128
    .venv/bin/python benchmarks/bench_recipes.py --data SET --sides 64,96 --networks 2 --seconds 180
    .venv/bin/python benchmarks/bench_recipes.py --data SET --blend s64,s64_wd5 --networks 2 --seconds 60
    .venv/bin/python benchmarks/bench_recipes.py --quick

``--sides`` (section 37 of benchmarks/README.md) asks another question: is an average of networks
at two resolutions worth more than one of as many networks at one, in the same total time?
``--blend`` asks it of recipes (section 44): an average across two recipes ("hyperparameter ensembles")
against one of either recipe alone.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_small_data import image_files, tiny_generated_set  # noqa: E402

import numpy as np  # noqa: E402

# overrides of the portfolio entry, in the space's parameter names ("size" is the image size)
RECIPES: dict[str, dict[str, Any]] = {
    "base": {},
    "heavy": {"aug.preset": "heavy"},
    "trivial": {"aug.preset": "custom", "aug.flip": True, "aug.crop_scale": 0.35, "aug.rotate": 10.0,
                "aug.translate": 0.1, "aug.color": 0.2, "aug.auto": "trivial", "aug.mix": "none", "aug.erase": 0.0},
    "mix": {"aug.preset": "custom", "aug.flip": True, "aug.crop_scale": 0.35, "aug.rotate": 10.0,
            "aug.translate": 0.1, "aug.color": 0.2, "aug.auto": "none", "aug.mix": "both",
            "aug.mixup_alpha": 0.2, "aug.cutmix_alpha": 1.0, "aug.erase": 0.0},
    "ema": {"ema": True},
    "w64": {"cnn.width": 64},
    "s64": {"size": 64},
    "s96": {"size": 96},
    "s160": {"size": 160},
    # at 64 px (the side a few hundred photos get in a final fit on a 2-core CPU): what regularises
    # a network trained for hundreds of epochs on a few hundred photos
    "s64_b32": {"size": 64, "batch_size": 32},
    "s64_heavy": {"size": 64, "aug.preset": "heavy"},
    "s64_trivial": {"size": 64, "aug.preset": "custom", "aug.flip": True, "aug.crop_scale": 0.35, "aug.rotate": 10.0,
                    "aug.translate": 0.1, "aug.color": 0.2, "aug.auto": "trivial", "aug.mix": "none", "aug.erase": 0.0},
    "s64_sgd": {"size": 64, "optimizer": "sgd", "lr.sgd": 0.05},
    # a fixed wavelet front (first-order scattering, custom_cnn.ScatterStem) in place of the learnt stem
    "s64_conv": {"size": 64, "cnn.stem_stride": 2, "cnn.stem": "conv"},
    "s64_scatter": {"size": 64, "cnn.stem_stride": 2, "cnn.stem": "scatter"},
    # at 64 px on a thousand photos or more: does a larger network than the hand loop's pay in the same time
    "s64_w48": {"size": 64, "cnn.width": 48},
    "s64_x2": {"size": 64, "cnn.blocks": 2},
    # at 64 px, stronger regularisation of the network itself (the entry: weight decay 0.05, dropout 0.1)
    "s64_wd5": {"size": 64, "weight_decay": 0.5},
    "s64_drop3": {"size": 64, "cnn.dropout": 0.3},
    # the train photos decoded at this many times the side (the search: training/augment.py train_side, 1.5x
    # for a network trained on crops; before section 47, 1x), the network trained at the side
    "s64_c100": {"size": 64, "cache": 1.0},
    "s64_c125": {"size": 64, "cache": 1.25},
    "s64_c150": {"size": 64, "cache": 1.5},
    "s96_c100": {"size": 96, "cache": 1.0},
    "s96_c125": {"size": 96, "cache": 1.25},
}


def load(folder: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    from automl_vision.data.images import decode

    files = image_files(folder)
    x = np.stack([decode(f, size, 3) for f, _ in files])
    y = np.array([classes.index(c) for _, c in files], dtype=np.int64)
    return x, y


def cache_side(cfg, overrides: dict[str, Any]) -> int:
    """The side a recipe's train photos are decoded at: the search's (``train_side``), or ``cache`` times
    the network's side (a multiple of 8)."""
    from automl_vision.training.augment import decoded_side, train_side

    if "cache" not in overrides:
        return train_side(cfg.image_size, cfg.aug.crop_scale)
    return decoded_side(cfg.image_size, overrides["cache"])


def config_of(entry: dict[str, Any], overrides: dict[str, Any], size: int, num_classes: int, num_train: int):
    """The TrialConfig the search's sampler builds for this entry with these overrides."""
    import optuna

    from automl_vision.plugins import get_plugin_manager
    from automl_vision.search.space import batch_choices, sample
    from automl_vision.settings import SearchSettings

    params = {**entry["params"], **{k: v for k, v in overrides.items() if k not in ("size", "cache")},
              "image_size": size}
    choices = batch_choices(num_train)  # a tiny set offers only small batches, as in the search
    if params.get("batch_size") not in choices:
        params["batch_size"] = max([b for b in choices if b <= params.get("batch_size", 64)] or [min(choices)])
    settings = SearchSettings.from_dict({"data": "-", "run_dir": "-", "study_name": "-", "image_sizes": [size]})
    return sample(optuna.trial.FixedTrial(params), settings, get_plugin_manager(), [params["family"]], {},
                  num_classes, 3, num_train, "cpu", 20)


def train_for(cfg, data, seconds: float, path, weights: dict[str, Any] | None = None):
    """One network of ``cfg`` trained for ``seconds`` of wall-clock time: the trainer's result.

    ``weights``: a state dict to start from, every tensor but the classifier's (``bench_transfer.py``)."""
    from automl_vision.models import build_model
    from automl_vision.training.trainer import train

    model = build_model({"family": cfg.family, "params": cfg.model_params, "in_chans": 3,
                         "image_size": cfg.image_size, "num_classes": data.num_classes})
    if weights is not None:
        missing = model.load_state_dict(weights, strict=False).missing_keys
        if any(not k.startswith("head") for k in missing):
            raise RuntimeError(f"the weights lack {missing}")
    t0 = time.perf_counter()

    def plan(done: int, epoch_seconds: float) -> int:  # as many epochs as the rest of the time affords
        return done + max(1, int((seconds - (time.perf_counter() - t0)) / max(epoch_seconds, 1e-3)))

    return train(model, cfg, data, path, plan=plan, grow_until=10**9)


def train_one(cfg, data, seconds: float, path, weights: dict[str, Any] | None = None):
    """One network of ``cfg`` trained for ``seconds`` (from ``weights`` if given, as :func:`train_for`):
    (plain, flipped) probabilities on the eval photos, epochs."""
    import torch

    from automl_vision.training.inference import predict_probs

    res = train_for(cfg, data, seconds, path, weights)
    # the plain probabilities are the trainer's last evaluation (the eval folder stands in for validation);
    # the flipped ones come from the engine's own inference on its execution path, as predict's flip TTA
    mean = torch.tensor(data.mean, device=path.torch_device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=path.torch_device).view(1, -1, 1, 1)
    flipped = predict_probs(res.model, data.x_val.flip(3), mean, std, path)
    return np.asarray(res.val_probs), np.asarray(flipped), res.epochs_run


def run_recipe(cfg, data, y_eval: np.ndarray, seconds: float, path, networks: int = 1) -> dict[str, Any]:
    """``networks`` networks of ``cfg`` (seeds ``cfg.seed``, ``cfg.seed + 1000``, ...), each trained for an
    equal share of ``seconds``, their probabilities averaged: what a final fit of that many networks delivers."""
    import dataclasses

    t0 = time.perf_counter()
    plain, flip, epochs = [], [], []
    for i in range(networks):
        share = (seconds - (time.perf_counter() - t0)) / (networks - i)
        p, f, e = train_one(dataclasses.replace(cfg, seed=cfg.seed + 1000 * i), data, share, path)
        plain.append(p)
        flip.append(p + f)
        epochs.append(e)

    def accuracy(members) -> float:
        return float((sum(members).argmax(1) == y_eval).mean())

    out = {"eval_accuracy": accuracy(plain), "eval_accuracy_flip": accuracy(flip),
           "epochs": int(sum(epochs) / networks), "seconds": round(time.perf_counter() - t0, 1)}
    if networks > 1:
        # how the average grows with its size, these networks' time held fixed: the mean accuracy of every
        # average of k of them (one seed's networks give C(K, k) averages instead of one)
        subsets = {k: [accuracy([plain[i] for i in c]) for c in itertools.combinations(range(networks), k)]
                   for k in range(1, networks + 1)}
        out.update(networks=networks, network_epochs=epochs, network_eval_accuracy=subsets[1],
                   mean_eval_accuracy_of_k={str(k): float(np.mean(v)) for k, v in subsets.items()})
    return out


def score_as_predict(model, cfg, eval_by_side: dict[int, np.ndarray], data) -> np.ndarray:
    """Eval-photo probabilities of ``model`` from predict's own :class:`ProbabilityModel`: averaged
    over its ``eval_sizes`` (training/augment.py), plain and flipped at each side."""
    from automl_vision.predict import ProbabilityModel
    from automl_vision.training.augment import eval_crops, eval_sizes

    spec = {"in_chans": 3, "image_size": cfg.image_size, "mean": data.mean, "std": data.std,
            "eval_sizes": eval_sizes(cfg.image_size, cfg.aug.crop_scale),
            "eval_crops": eval_crops(cfg.image_size, cfg.aug.crop_scale)}
    module = ProbabilityModel([model.to("cpu").eval()], [spec], [1.0], tta=True)
    return module.probs([eval_by_side[side] for side in module.sizes])


def run_compositions(entry, root: Path, classes: list[str], variants: list[tuple[str, int, dict[str, Any]]],
                     seconds: float, networks: int, seed: int, path) -> dict[str, Any]:
    """``networks`` networks (seeds ``seed``, ``seed + 1000``, ...) of each variant ``(label, side, overrides)``,
    each trained for ``seconds`` on every train photo and scored as ``predict`` scores it (its eval sides, flip
    TTA); then the accuracy of every average of ``networks`` of them, grouped by how many come from each variant:
    at equal total training time, does an average across variants (resolutions, recipes) beat one of a single
    variant?"""
    import dataclasses

    from automl_vision.training.augment import eval_sizes
    from automl_vision.training.trainer import TensorData

    probs: list[tuple[str, np.ndarray, int]] = []  # (variant, eval probabilities, epochs)
    eval_cache: dict[int, np.ndarray] = {}
    y_eval = None
    n_train = len(image_files(root / "train"))
    for label, side, overrides in variants:
        cfg = config_of(entry, overrides, side, len(classes), n_train)
        xt, yt, xe, ye = load(root / "train", classes, cache_side(cfg, overrides)) + load(root / "eval", classes, side)
        y_eval = ye
        eval_cache.setdefault(side, xe)
        data = TensorData.from_arrays(xt, yt, xe, ye, len(classes))
        for s in eval_sizes(side, cfg.aug.crop_scale):
            if s not in eval_cache:
                eval_cache[s] = load(root / "eval", classes, s)[0]
        for i in range(networks):
            c = dataclasses.replace(cfg, seed=seed + 1000 * i)
            res = train_for(c, data, seconds, path)
            p, epochs = score_as_predict(res.model, c, eval_cache, data), res.epochs_run
            probs.append((label, p, epochs))
            print(f"  {label} network {i} seed {c.seed}: eval {float((p.argmax(1) == ye).mean()):.3f} "
                  f"after {epochs} epochs", flush=True)
    labels = [v[0] for v in variants]
    groups: dict[str, list[float]] = {}
    for combo in itertools.combinations(range(len(probs)), networks):
        key = "+".join(f"{sum(1 for i in combo if probs[i][0] == label)}x{label}" for label in labels)
        acc = float((sum(probs[i][1] for i in combo).argmax(1) == y_eval).mean())
        groups.setdefault(key, []).append(acc)
    return {"seed": seed, "variants": labels, "networks": networks, "seconds_per_network": seconds,
            "network_variant": [p[0] for p in probs], "network_epochs": [p[2] for p in probs],
            "network_eval_accuracy": [float((p[1].argmax(1) == y_eval).mean()) for p in probs],
            "mean_eval_accuracy_by_composition": {k: float(np.mean(v)) for k, v in groups.items()},
            "averages_by_composition": {k: len(v) for k, v in groups.items()}}


def compositions_markdown(payload: dict[str, Any]) -> str:
    """The ``--sides`` / ``--blend`` results: per seed, the mean accuracy of the averages of each composition."""
    st = payload["settings"]
    sides = payload["benchmark"] == "recipes_sides"
    name = (lambda v: f"{v} px") if sides else (lambda v: f"`{v}`")
    keys: list[str] = []
    for r in payload["runs"]:
        keys += [k for k in r["mean_eval_accuracy_by_composition"] if k not in keys]
    rows = [[r["seed"], *[r["mean_eval_accuracy_by_composition"].get(k, "") for k in keys],
             " / ".join(f"{name(v)} {a:.3f} ({e} ep)" for v, a, e in zip(r["network_variant"], r["network_eval_accuracy"],
                                                                        r["network_epochs"]))]
            for r in payload["runs"]]
    kind = "side" if sides else "recipe"
    return (f"Set `{st['set']}` ({st['n_train']} train / {st['n_eval']} eval photos), entry `{st['entry']}`, "
            f"{st['networks']} network(s) of each of {', '.join(name(x) for x in st['variants'])}, each trained "
            f"{st['seconds_per_network']:.0f} s and scored as predict scores it (its eval sides, flip TTA); the mean "
            f"accuracy of every average of {st['networks']} of them, by how many come from each {kind} "
            f"(equal total training time).\n\n"
            + C.table(["seed", *keys, f"each network: {kind}, eval accuracy (epochs)"], rows))


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for name, s in payload["summary"].items():
        rows.append([name, s["n"], s["eval_accuracy"]["median"], f"{s['eval_accuracy']['min']:.3f}-{s['eval_accuracy']['max']:.3f}",
                     s["eval_accuracy_flip"]["median"], s["epochs"]["median"]])
    st = payload["settings"]
    return (f"Set `{st['set']}` ({st['n_train']} train / {st['n_eval']} eval photos), entry `{st['entry']}`, "
            f"{st['seconds']:.0f} s a recipe"
            + (f" shared by {st['networks']} networks whose predictions are averaged" if st.get("networks", 1) > 1 else "")
            + f", seeds {st['seeds']}.\n\n"
            + C.table(["recipe", "runs", "eval acc (median)", "range", "with flip TTA", "epochs"], rows)
            + "".join(f"\n\n`{r['recipe']}` seed {r['seed']}: the mean eval accuracy of an average of k of its "
                      f"{r['networks']} networks: " + ", ".join(f"k={k} {v:.3f}" for k, v in r["mean_eval_accuracy_of_k"].items())
                      for r in payload["runs"] if r.get("mean_eval_accuracy_of_k")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a set folder with train/<class>/ and eval/<class>/")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"some of {', '.join(RECIPES)} (default: all)")
    ap.add_argument("--entry", default=None, help="portfolio entry name (default: the first)")
    ap.add_argument("--image-size", type=int, default=128, help="image size of the recipes without their own (default 128)")
    ap.add_argument("--seconds", type=float, default=None, help="training time of each recipe (default 240; 3 with --quick)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of a throwaway training before the first timed one (default 10; 0 with --quick): "
                         "a process's first network ran up to 24%% fewer epochs in its time than the next (section 47)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--networks", type=int, default=1,
                    help="networks a recipe trains, each for an equal share of --seconds, their predictions "
                         "averaged (default 1)")
    ap.add_argument("--sides", default=None,
                    help="instead of recipes: --networks networks of the entry at each of these comma-separated "
                         "sides (e.g. 64,96), each trained for --seconds and scored as predict scores it; reports "
                         "every average of --networks of them by how many come from each side")
    ap.add_argument("--blend", default=None,
                    help="instead of recipes: --networks networks of each of these comma-separated recipes (e.g. "
                         "s64,s64_wd5), each trained for --seconds and scored as predict scores it; reports every "
                         "average of --networks of them by how many come from each recipe")
    ap.add_argument("--quick", action="store_true", help="smoke setting: tiny generated set, 3 s a recipe (figures mean nothing)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/recipes_<set>.json; with --quick results/quick/)")
    args = ap.parse_args(argv)

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    for r in recipes:
        if r not in RECIPES:
            ap.error(f"--recipes: unknown recipe {r!r}; expected some of {', '.join(RECIPES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error("--seeds takes whole numbers like 0,1,2")
    if args.networks < 1:
        ap.error("--networks takes a whole number of at least 1")
    sides: list[int] = []
    if args.sides:
        try:
            sides = sorted({int(x) for x in args.sides.split(",") if x.strip()})
        except ValueError:
            ap.error("--sides takes whole numbers of pixels like 64,96")
        if len(sides) < 2 or min(sides) < 8:
            ap.error("--sides takes at least two different sides of 8 px or more, like 64,96")
    blend = list(dict.fromkeys(r.strip() for r in (args.blend or "").split(",") if r.strip()))
    if args.blend is not None:
        if sides:
            ap.error("give --sides or --blend, not both")
        unknown = [r for r in blend if r not in RECIPES]
        if unknown or len(blend) < 2:
            ap.error(f"--blend takes at least two different recipes of {', '.join(RECIPES)}, like s64,s64_wd5")
    if not args.data and not args.quick:
        ap.error("give --data (a folder with train/ and eval/) or --quick")
    from automl_vision.search.portfolio import load_portfolio

    entries = load_portfolio()
    entry = next((e for e in entries if e["name"] == args.entry), None) if args.entry else entries[0]
    if entry is None:
        ap.error(f"--entry: no portfolio entry {args.entry!r}; expected one of {', '.join(e['name'] for e in entries)}")
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 240.0)

    import torch

    from automl_vision.training import device as dev
    from automl_vision.training.trainer import TensorData

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
        root = tiny_generated_set(Path(tmp) / "tiny-blobs") if args.quick else Path(args.data)
        if not ((root / "train").is_dir() and (root / "eval").is_dir()):
            ap.error(f"{root}: expected {root}/train/<class>/ and {root}/eval/<class>/")
        classes = sorted({c for _, c in image_files(root / "train")})
        path = dev.choose()
        payload: dict[str, Any] = {
            "benchmark": "recipes", "machine": C.machine(), "quick": args.quick,
            "settings": {"set": root.name, "entry": entry["name"], "seconds": seconds, "seeds": seeds,
                         "recipes": {r: RECIPES[r] for r in recipes}, "image_size": args.image_size,
                         "networks": args.networks,
                         "execution_path": str(path)},
            "runs": [], "summary": {},
        }
        out = Path(args.out) if args.out else C.default_path(f"recipes_{root.name}", args.quick)
        warmup = args.warmup if args.warmup is not None else (0.0 if args.quick else 10.0)
        if warmup > 0:
            from automl_vision.training.trainer import TensorData

            xw, yw = load(root / "train", classes, args.image_size)
            train_for(config_of(entry, {}, args.image_size, len(classes), len(yw)),
                      TensorData.from_arrays(xw, yw, xw[:64], yw[:64], len(classes)), warmup, path)
            payload["settings"]["warmup_seconds"] = warmup
        if sides or blend:
            variants = ([(str(x), x, {}) for x in sides] if sides else
                        [(r, int(RECIPES[r].get("size", args.image_size)), RECIPES[r]) for r in blend])
            payload["benchmark"] = "recipes_sides" if sides else "recipes_blend"
            payload["settings"].update(variants=[v[0] for v in variants], seconds_per_network=seconds,
                                       recipes={r: RECIPES[r] for r in blend}, n_train=len(image_files(root / "train")),
                                       n_eval=len(image_files(root / "eval")))
            if sides:
                payload["settings"]["sides"] = sides
            for seed in seeds:
                run = run_compositions(entry, root, classes, variants, seconds, args.networks, seed, path)
                if sides:
                    run["network_side"] = [int(v) for v in run["network_variant"]]
                payload["runs"].append(run)
                print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in run["mean_eval_accuracy_by_composition"].items()),
                      flush=True)
                payload["markdown"] = compositions_markdown(payload)
                payload["load_average_at_end"] = C.load_average()
                C.write_results("recipes", payload, out)
            print(payload["markdown"])
            return 0
        cache: dict[int, tuple] = {}
        for seed in seeds:
            for name in recipes:
                size = int(RECIPES[name].get("size", args.image_size))
                cfg = config_of(entry, RECIPES[name], size, len(classes), len(image_files(root / "train")))
                key = (size, cache_side(cfg, RECIPES[name]))
                if key not in cache:
                    cache[key] = load(root / "train", classes, key[1]) + load(root / "eval", classes, size)
                xt, yt, xe, ye = cache[key]
                payload["settings"].update(n_train=len(yt), n_eval=len(ye))
                data = TensorData.from_arrays(xt, yt, xe, ye, len(classes))
                cfg.seed = seed
                run = {"recipe": name, "seed": seed, "image_size": size, **run_recipe(cfg, data, ye, seconds, path, args.networks)}
                payload["runs"].append(run)
                print(f"{name} seed {seed}: eval {run['eval_accuracy']:.3f} (flip {run['eval_accuracy_flip']:.3f}), "
                      f"{run['epochs']} epochs in {run['seconds']:.0f}s", flush=True)
                for r in recipes:
                    mine = [x for x in payload["runs"] if x["recipe"] == r]
                    if mine:
                        payload["summary"][r] = {"n": len(mine), **{k: C.spread([x[k] for x in mine])
                                                                    for k in ("eval_accuracy", "eval_accuracy_flip", "epochs")}}
                payload["markdown"] = markdown(payload)
                payload["load_average_at_end"] = C.load_average()
                C.write_results("recipes", payload, out)
    print(payload["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
