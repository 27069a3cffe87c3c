"""Search quality per budget: what the AutoML buys over simpler ways of spending the same time.

Two datasets, each split once (stratified 70/15/15 with seed 0, the split written as
``train/ val/ test/`` folders so every method sees the same images):

* scikit-learn's digits (1,797 8x8 greyscale images, 10 classes; ships with scikit-learn);
* a harder second set: by default generated here (six classes of shapes drawn at random
  position, size, angle and colour on cluttered, noisy backgrounds, 32x32 colour), or a
  real class-per-folder tree given with ``--data`` (e.g. the cats-vs-dogs photos).

Arms, each with the same time budget per dataset and seed:

* ``default``: automl-vision's default search (TPE sampler, Hyperband pruning, every model
  family, the curated zoo);
* ``random``: the same space with Optuna's random sampler (``--sampler random``);
* ``no-pruning``: the same space without pruning (``--pruner none``);
* ``svc``: scikit-learn's RBF SVC on flattened pixels with a small grid over C and gamma,
  chosen on the validation split (seconds; it does not need the budget).

Reported per arm: best validation accuracy and test accuracy (the search's deliverable,
and the best single model), median and range over seeds, the number of trials, and the
time to reach a validation accuracy (``--target``), read from the trials' ``status.json``
(finish time and value).

``--quick`` runs tiny searches (a few trials of small CNNs at 16 px) for the smoke test.
The full setting (``--budget 5m --seeds 0,1,2``) takes about an hour per dataset pair on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import numpy as np  # noqa: E402

ARMS = {
    "default": {},
    "random": {"sampler": "random"},
    "no-pruning": {"pruner": "none"},
}
SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")
DEFAULT_TARGETS = {"digits": 0.98, "shapes": 0.90}


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed split: automl-vision's own stratified 70/15/15 split with seed 0."""
    from automl_vision.data.prepare import stratified_split

    return stratified_split(np.asarray(labels), (0.70, 0.15, 0.15), seed=0)


def write_split_tree(out: Path, images: list, labels: np.ndarray, classes: list[str], names: list[str]) -> dict:
    """Write ``out/{train,val,test}/<class>/<name>`` from arrays or source files."""
    from PIL import Image

    split = split_indices(labels)
    for part, idx in split.items():
        for i in idx:
            folder = out / part / classes[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            src = images[i]
            if isinstance(src, np.ndarray):
                Image.fromarray(src).save(folder / f"{names[i]}.png")
            else:
                dst = folder / names[i]
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    return {k: v.tolist() for k, v in split.items()}


def digits_arrays(per_class: int | None):
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs, labels, names, seen = [], [], [], {}
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        y = int(y)
        if per_class is not None and seen.get(y, 0) >= per_class:
            continue
        seen[y] = seen.get(y, 0) + 1
        imgs.append((np.asarray(img) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8))
        labels.append(y)
        names.append(f"{i:04d}")
    return imgs, np.asarray(labels), [str(c) for c in range(10)], names


def shapes_arrays(per_class: int, size: int = 32, seed: int = 0):
    """Six shape classes on cluttered backgrounds; position, scale, angle and colours vary."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    up = 4  # drawn at 4x and reduced: anti-aliased edges
    big = size * up
    imgs, labels, names = [], [], []
    for k, shape in enumerate(SHAPES):
        for j in range(per_class):
            bg = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)).resize((big, big), Image.BICUBIC)
            draw = ImageDraw.Draw(bg)
            for _ in range(int(rng.integers(2, 5))):  # distractor blobs
                x, y = (int(v) for v in rng.integers(0, big, 2))
                r = int(rng.integers(big // 20, big // 10))
                draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            cx, cy = (float(v) for v in rng.uniform(big * 0.3, big * 0.7, 2))
            r = float(rng.uniform(big * 0.16, big * 0.3))
            angle = float(rng.uniform(0, 2 * np.pi))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))

            def poly(points):
                c, s = np.cos(angle), np.sin(angle)
                return [(cx + px * c - py * s, cy + px * s + py * c) for px, py in points]

            if shape == "disc":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif shape == "ring":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
            elif shape == "square":
                draw.polygon(poly([(-r, -r), (r, -r), (r, r), (-r, r)]), fill=colour)
            elif shape == "triangle":
                draw.polygon(poly([(0, -r), (r * 0.87, r * 0.5), (-r * 0.87, r * 0.5)]), fill=colour)
            elif shape == "cross":
                w = r * 0.3
                draw.polygon(poly([(-r, -w), (r, -w), (r, w), (-r, w)]), fill=colour)
                draw.polygon(poly([(-w, -r), (w, -r), (w, r), (-w, r)]), fill=colour)
            else:  # bar
                draw.polygon(poly([(-r, -r * 0.25), (r, -r * 0.25), (r, r * 0.25), (-r, r * 0.25)]), fill=colour)
            img = np.asarray(bg.resize((size, size), Image.LANCZOS), dtype=np.int16)
            img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
            imgs.append(img)
            labels.append(k)
            names.append(f"{shape}_{j:04d}")
    return imgs, np.asarray(labels), list(SHAPES), names


def folder_files(location: str, per_class: int | None):
    from automl_vision.data.sources import load_dataset
    from automl_vision.plugins import get_plugin_manager

    ds = load_dataset(location, get_plugin_manager())
    files, labels, names, seen = [], [], [], {}
    for s in ds.samples:
        if s.path is None:
            continue
        if per_class is not None and seen.get(s.label, 0) >= per_class:
            continue
        seen[s.label] = seen.get(s.label, 0) + 1
        files.append(Path(s.path))
        labels.append(int(s.label))
        names.append(Path(s.path).name)
    return files, np.asarray(labels), list(ds.classes), names


def pixel_features(images: list, size: int | None) -> np.ndarray:
    """Flattened pixels in [0, 1]; files and large images decoded to ``size`` px."""
    from automl_vision.data.images import decode

    rows = []
    for img in images:
        if isinstance(img, np.ndarray) and (size is None or img.shape[0] == size):
            arr = img
        else:
            arr = decode(img, size or 32, 3)
        rows.append(np.asarray(arr, dtype=np.float32).reshape(-1) / 255.0)
    return np.stack(rows)


# --------------------------------------------------------------------------------------
# arms
# --------------------------------------------------------------------------------------
def run_svc(images: list, labels: np.ndarray, split: dict, size: int | None, quick: bool) -> dict[str, Any]:
    from sklearn.svm import SVC

    t0 = time.perf_counter()
    X = pixel_features(images, size)
    tr, va, te = (np.asarray(split[k]) for k in ("train", "val", "test"))
    scale = 1.0 / (X.shape[1] * X[tr].var())  # scikit-learn's gamma="scale"
    grid = [(c, g) for c in ((1.0, 10.0) if quick else (1.0, 10.0, 100.0)) for g in (0.3, 1.0, 3.0)]
    best = None
    for c, g in grid:
        clf = SVC(C=c, gamma=g * scale, kernel="rbf").fit(X[tr], labels[tr])
        acc = float((clf.predict(X[va]) == labels[va]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, g, clf)
    acc_val, c, g, clf = best
    test = float((clf.predict(X[te]) == labels[te]).mean()) if len(te) else float("nan")
    seconds = time.perf_counter() - t0
    return {"best_val": acc_val, "test": test, "test_best_single": test, "seconds": seconds, "trials": len(grid),
            "params": {"C": c, "gamma": f"{g} x scale", "features": int(X.shape[1])}, "reached": [[seconds, acc_val]]}


def trial_curve(run_dir: Path, t_start: float) -> list[list[float]]:
    """[seconds since the search started, best validation value so far] at each trial's finish."""
    points = []
    for status in sorted(run_dir.glob("trials/*/status.json")):
        try:
            rec = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("state") != "COMPLETE" or rec.get("value") is None or rec.get("finished") is None:
            continue
        points.append((float(rec["finished"]) - t_start, float(rec["value"])))
    points.sort()
    curve, best = [], -np.inf
    for t, v in points:
        if v > best:
            best = v
            curve.append([round(t, 2), v])
    return curve


def count_states(run_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for status in run_dir.glob("trials/*/status.json"):
        try:
            state = json.loads(status.read_text()).get("state", "?")
        except (OSError, ValueError):
            state = "?"
        out[state] = out.get(state, 0) + 1
    return out


def run_automl(arm: str, data_dir: Path, out: Path, seed: int, search_opts: dict[str, Any], subprocess_mode: bool) -> dict[str, Any]:
    opts = dict(search_opts, seed=seed, **ARMS[arm])
    shutil.rmtree(out, ignore_errors=True)
    t_start = time.time()
    error = None
    if subprocess_mode:
        cmd = [sys.executable, "-m", "automl_vision.cli", "search", str(data_dir), "--out", str(out), "--plain"]
        for k, v in opts.items():
            if v is not None:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            error = (proc.stderr or proc.stdout)[-2000:]
    else:
        # the body of automl_vision.search(); that name is shadowed by the automl_vision.search
        # sub-package once it is imported, so the function is not called by name here
        from automl_vision.settings import settings_from_options
        from automl_vision.search.run import run_search

        try:
            settings = settings_from_options(str(data_dir), str(out), **{k: v for k, v in opts.items() if v is not None})
            run_search(settings, argv=["bench_search_quality", str(data_dir)], plain=True)
        except Exception as exc:  # one failed arm must not lose the others' figures
            error = f"{type(exc).__name__}: {exc}"
    wall = time.time() - t_start
    report = {}
    try:
        report = json.loads((out / "final" / "report.json").read_text())
    except (OSError, ValueError):
        pass
    res: dict[str, Any] = {"seconds": wall, "states": count_states(out), "reached": trial_curve(out, t_start)}
    res["trials"] = sum(res["states"].values())
    if error or "best_val" not in report:
        res["error"] = error or report.get("error", "no report")
        res.update(best_val=float("nan"), test=float("nan"), test_best_single=float("nan"))
        return res
    deliverable = report.get("deliverable", "best")
    best_test = report.get("best_test", {}).get("accuracy", float("nan"))
    ens_test = report.get("ensemble", {}).get("test", {}).get("accuracy", float("nan"))
    res.update(
        best_val=report["best_val"].get("accuracy"),
        test=ens_test if deliverable == "ensemble" else best_test,
        test_best_single=best_test,
        deliverable=deliverable,
        best_model=report.get("best_model"),
    )
    return res


def time_to(curve: list[list[float]], target: float) -> float | None:
    for t, v in curve:
        if v >= target:
            return t
    return None


def summarise(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    times = [time_to(r["reached"], target) for r in ok]
    reached = [t for t in times if t is not None]
    return {
        "seeds": len(runs),
        "failed": len(runs) - len(ok),
        "best_val": C.spread([r["best_val"] for r in ok]),
        "test": C.spread([r["test"] for r in ok]),
        "test_best_single": C.spread([r["test_best_single"] for r in ok]),
        "trials": C.spread([r["trials"] for r in ok]),
        "time_to_target": C.spread(reached),
        "reached_target": f"{len(reached)}/{len(runs)}",
    }


def fmt_range(s: dict[str, float], digits: int = 3) -> str:
    if not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="5m", help="time budget of each search, e.g. 90s, 5m (default 5m)")
    ap.add_argument("--seeds", default="0,1,2", help="search seeds (the data split is fixed, seed 0)")
    ap.add_argument("--datasets", default="digits,second", help="digits and/or second (the harder set)")
    ap.add_argument("--arms", default="default,random,no-pruning,svc", help="which arms to run")
    ap.add_argument("--data", help="a class-per-folder tree used as the second dataset (default: generated shapes)")
    ap.add_argument("--per-class", type=int, help="at most this many images per class")
    ap.add_argument("--target", type=float, action="append", default=[], metavar="ACC",
                    help="validation accuracy whose time to reach is reported: once for digits, "
                         "then for the second set (default: 0.98 digits, 0.90 shapes, 0.75 a --data folder)")
    ap.add_argument("--models", help="--models of the searches (default: automl-vision's default space)")
    ap.add_argument("--image-size", help="--image-size of the searches (default: chosen by automl-vision)")
    ap.add_argument("--max-epochs", type=int, help="--max-epochs of the searches (default: the preset's)")
    ap.add_argument("--precision", default=None, help="--precision of the searches (default: auto)")
    ap.add_argument("--subprocess", action="store_true", help="run each search as an 'automl-vision search' process")
    ap.add_argument("--merge", action="store_true",
                    help="keep the datasets of an earlier results file that this run does not measure")
    ap.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds; figures mean nothing)")
    ap.add_argument("--workdir", help="keep data and run directories here (default: temporary, removed)")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/search_quality.json; with --quick results/quick/search_quality.json)")
    args = ap.parse_args(argv)

    from automl_vision.settings import parse_duration
    from automl_vision.types import UsageError

    search_opts: dict[str, Any] = {"models": args.models, "image_size": args.image_size, "max_epochs": args.max_epochs,
                                   "precision": args.precision}
    if args.quick:
        search_opts.update(n_trials=2, max_epochs=1, image_size="16", models=args.models or "cnn",
                           precision=args.precision or "fp32", channels_last="off")
        args.per_class = args.per_class or 6
        args.seeds = "0" if args.seeds == "0,1,2" else args.seeds
        budget = None
        import torch

        torch.set_num_threads(1)  # a smoke run on a busy machine: no OpenMP threads spinning for a core
    else:
        try:
            budget = parse_duration(args.budget)
        except UsageError as exc:
            ap.error(f"--budget: {exc}")
        search_opts["time_budget"] = budget
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error("--seeds takes whole numbers like 0,1,2")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for a in arms:
        if a not in (*ARMS, "svc"):
            ap.error(f"--arms: unknown arm {a!r}; expected some of {', '.join([*ARMS, 'svc'])}")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for d in datasets:
        if d not in ("digits", "second"):
            ap.error(f"--datasets: unknown {d!r}; expected digits and/or second")

    out_path = Path(args.out) if args.out else C.default_path("search_quality", args.quick)
    payload: dict[str, Any] = {"benchmark": "search_quality", "machine": C.machine(), "quick": args.quick,
                               "settings": {"budget_seconds": budget, "seeds": seeds, "arms": arms,
                                            "search_options": search_opts, "per_class": args.per_class,
                                            "split": "stratified 70/15/15, seed 0 (fixed for every arm and seed)"},
                               "datasets": {}}
    if args.merge and out_path.exists():
        try:
            old = json.loads(out_path.read_text())
            payload["datasets"] = {k: v for k, v in old.get("datasets", {}).items() if k}
            payload["earlier_runs"] = old.get("earlier_runs", []) + [{"machine": old.get("machine"),
                                                                       "settings": old.get("settings")}]
        except (OSError, ValueError):
            pass

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-search-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        prepared = {}
        for i, which in enumerate(datasets):
            if which == "digits":
                name, (images, labels, classes, names) = "digits", digits_arrays(args.per_class)
                svc_size = 8
            elif args.data:
                name = Path(args.data.rstrip("/")).name or "folder"
                images, labels, classes, names = folder_files(args.data, args.per_class)
                svc_size = 32
            else:
                name, (images, labels, classes, names) = "shapes", shapes_arrays(args.per_class or 200)
                svc_size = 32
            default_target = DEFAULT_TARGETS.get(name, 0.75)
            target = args.target[i] if i < len(args.target) else default_target
            tree = work / "data" / name
            shutil.rmtree(tree, ignore_errors=True)
            split = write_split_tree(tree, images, labels, classes, names)
            prepared[name] = (tree, images, labels, split, svc_size, target)
            payload["datasets"][name] = {
                "images": len(labels), "classes": classes, "target_val_accuracy": target,
                "split_sizes": {k: len(v) for k, v in split.items()}, "source": args.data if name not in ("digits", "shapes") else name,
                "runs": {a: [] for a in arms}, "summary": {},
                # per dataset: a --merge run may measure another dataset with other settings
                "budget_seconds": budget, "seeds": seeds, "search_options": search_opts,
                "date_utc": payload["machine"]["date_utc"], "load_average_at_start": C.load_average(),
            }
            print(f"{name}: {len(labels)} images, {len(classes)} classes, split "
                  f"{ {k: len(v) for k, v in split.items()} }", flush=True)

        # imported before the first arm, so that it does not pay the others' start-up in its budget
        import timm  # noqa: F401

        import automl_vision.search.run  # noqa: F401

        def save() -> None:
            payload["load_average_at_end"] = C.load_average()
            C.write_results("search_quality", payload, out_path)

        for k, seed in enumerate(seeds):
            for name, (tree, images, labels, split, svc_size, target) in prepared.items():
                entry = payload["datasets"][name]
                order = arms[k % len(arms):] + arms[: k % len(arms)]  # rotate: load drift hits every arm alike
                for arm in order:
                    if arm == "svc":
                        if seed != seeds[0]:
                            continue  # deterministic: one run is the figure
                        res = run_svc(images, labels, split, svc_size, args.quick)
                    else:
                        res = run_automl(arm, tree, work / "runs" / f"{name}-{arm}-s{seed}", seed, search_opts,
                                         args.subprocess)
                    res.update(seed=seed, load_average=C.load_average())
                    entry["runs"][arm].append(res)
                    entry["summary"][arm] = summarise(entry["runs"][arm], target)
                    entry["load_average_at_end"] = C.load_average()
                    save()
                    print(f"  {name} seed {seed} {arm:11s}: val {res['best_val']:.4f} test {res['test']:.4f} "
                          f"trials {res['trials']} in {res['seconds']:.0f}s"
                          + (f"  ERROR {res['error'][:200]}" if "error" in res else ""), flush=True)

        for name, entry in payload["datasets"].items():
            print(f"\n{name} (target validation accuracy {entry['target_val_accuracy']}; "
                  f"{len(seeds)} seed(s); budget {budget if budget else 'n/a'} s)")
            print(C.table(["arm", "best val acc", "test acc (deliverable)", "test acc (best single)", "trials",
                           "time to target s", "reached"],
                          [[arm + (f" ({s['failed']} failed)" if s["failed"] else ""), fmt_range(s["best_val"]), fmt_range(s["test"]), fmt_range(s["test_best_single"]),
                            fmt_range(s["trials"], 0), fmt_range(s["time_to_target"], 0), s["reached_target"]]
                           for arm, s in entry["summary"].items()]))
        save()
        print(f"\nresults: {out_path}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
