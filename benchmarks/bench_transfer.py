"""Pretraining on other photo folders: does it help a set of a few hundred photos at equal time?

The question behind it (issue 18, section 51 of benchmarks/README.md): a network trained from
scratch on 244 photos tops out near 0.80 however the time is spent. Would the same network,
first trained on the photos of *other* folders (every other set under the benchmark's data
root, their classes kept apart), then trained on the set for as long as a fresh one, do better?
If it did on a few thousand photos, shipping weights pretrained on a larger public set would
be worth building.

The source network: the first portfolio entry at 64 px with as many outputs as the sources
have classes, trained by the engine's trainer for ``--pretrain-seconds`` on every train photo
of the sources (decoded at the side the search decodes training photos at), 256 of them held
out to report its accuracy. Then for every seed, each arm trains one network of the entry on
every train photo of ``--data`` for ``--seconds`` (the schedule re-planned to end on time, as a
final fit's), scored once on the eval folder, plain and with flip test-time augmentation:

* ``scratch``: fresh weights (what the search does);
* ``pretrained``: every weight but the classifier from the source network, trained as fresh;
* ``backbone01``: the same, the loaded layers at a tenth of the learning rate (``--backbone-lr-scale 0.1``);
* ``lr01``: the same, the whole network at a tenth of the learning rate.

``--quick`` is the smoke setting: tiny generated sets, 3 s a network; results go to ``results/quick/``.

Example::

    .venv/bin/python benchmarks/bench_transfer.py --data /work/bench-data/hymenoptera --seeds 1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_recipes as R  # noqa: E402
from bench_small_data import image_files, tiny_generated_set  # noqa: E402

import numpy as np  # noqa: E402

ARMS = ("scratch", "pretrained", "backbone01", "lr01")


def source_sets(root: Path, target: Path, exclude: set[str]) -> list[Path]:
    return [p for p in sorted(root.iterdir())
            if (p / "train").is_dir() and p.resolve() != target.resolve() and p.name not in exclude]


def pretrain(entry: dict[str, Any], sources: list[Path], seconds: float, path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The source network's weights (the classifier left out) and what it learnt."""
    import torch

    from automl_vision.training.trainer import TensorData

    xs, ys, offset = [], [], 0
    side = R.cache_side(R.config_of(entry, {}, 64, 2, 1000), {})
    for s in sources:
        classes = sorted({c for _, c in image_files(s / "train")})
        x, y = R.load(s / "train", classes, side)
        xs.append(x)
        ys.append(y + offset)
        offset += len(classes)
    x, y = np.concatenate(xs), np.concatenate(ys)
    held = np.random.default_rng(0).choice(len(y), min(256, len(y) // 4), replace=False)
    # the held-out photos at the network's side, area-averaged from the larger training decode
    x_held = torch.nn.functional.interpolate(torch.from_numpy(x[held]).permute(0, 3, 1, 2).float(), size=64,
                                             mode="area").round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    cfg = R.config_of(entry, {}, 64, offset, len(y))
    t0 = time.perf_counter()
    res = R.train_for(cfg, TensorData.from_arrays(x, y, x_held, y[held], offset), seconds, path)
    info = {"sources": [s.name for s in sources], "photos": int(len(y)), "classes": offset,
            "epochs": res.epochs_run, "seconds": round(time.perf_counter() - t0, 1),
            "held_out": int(len(held)),
            "held_out_accuracy": float((np.asarray(res.val_probs).argmax(1) == y[held]).mean())}
    return {k: v for k, v in res.model.state_dict().items() if not k.startswith("head")}, info


def target_data(entry: dict[str, Any], root: Path):
    """The set's config, its photos (train decoded as the search decodes them) and the eval labels."""
    from automl_vision.training.trainer import TensorData

    classes = sorted({c for _, c in image_files(root / "train")})
    cfg = R.config_of(entry, {}, 64, len(classes), len(image_files(root / "train")))
    xt, yt = R.load(root / "train", classes, R.cache_side(cfg, {}))
    xe, ye = R.load(root / "eval", classes, 64)
    return cfg, TensorData.from_arrays(xt, yt, xe, ye, len(classes)), ye


def fine_tune(cfg, data, y_eval: np.ndarray, weights: dict[str, Any] | None, arm: str, seed: int,
              seconds: float, path) -> dict[str, Any]:
    import torch

    cfg = dataclasses.replace(cfg, seed=seed)
    if arm == "backbone01":
        cfg = dataclasses.replace(cfg, backbone_lr_scale=0.1, head=["head"])
    elif arm == "lr01":
        cfg = dataclasses.replace(cfg, lr=cfg.lr * 0.1)
    start = None if arm == "scratch" else weights
    torch.manual_seed(seed)  # the classifier's (and a scratch network's) initial weights
    plain, flipped, epochs = R.train_one(cfg, data, seconds, path, start)
    return {"seed": seed, "arm": arm, "epochs": epochs, "loaded_tensors": len(start or {}),
            "eval_accuracy": float((plain.argmax(1) == y_eval).mean()),
            "eval_accuracy_flip": float(((plain + flipped).argmax(1) == y_eval).mean())}


def markdown(payload: dict[str, Any]) -> str:
    st, pre = payload["settings"], payload.get("pretraining") or {}
    runs, arms = payload["runs"], [a for a in ARMS if any(r["arm"] == a for r in payload["runs"])]
    seeds = sorted({r["seed"] for r in runs})
    cell = {(r["seed"], r["arm"]): f"{r['eval_accuracy_flip']:.3f} ({r['epochs']} ep)" for r in runs}
    rows = [[s] + [cell.get((s, a), "") for a in arms] for s in seeds]
    return (f"Set `{st['set']}` ({st['n_train']} train / {st['n_eval']} eval photos), entry `{st['entry']}` at 64 px; "
            f"source network: {pre.get('photos')} photos of {pre.get('classes')} classes from "
            f"{', '.join(pre.get('sources', []))}, {pre.get('epochs')} epochs in {pre.get('seconds')} s, "
            f"{pre.get('held_out_accuracy', 0):.3f} on {pre.get('held_out')} of them held out. Each arm one network trained "
            f"{st['seconds']:.0f} s on the set; eval accuracy with flip TTA (epochs).\n\n"
            + C.table(["seed"] + arms, rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="the set: a folder with train/<class>/ and eval/<class>/")
    ap.add_argument("--sources", default=None,
                    help="folder whose other sets (each with train/<class>/) the source network learns from "
                         "(default: the folder holding --data)")
    ap.add_argument("--exclude", default="",
                    help="comma-separated source sets to leave out (e.g. a superset of --data's photos)")
    ap.add_argument("--pretrain-seconds", type=float, default=None, help="source network's training (default 300)")
    ap.add_argument("--seconds", type=float, default=None, help="each network's training on the set (default 120)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"some of {', '.join(ARMS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smoke setting: tiny generated sets, 3 s a network")
    ap.add_argument("--out", help="results JSON (default: benchmarks/results/transfer_<set>.json)")
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms):
        ap.error(f"--arms takes some of {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error("--seeds takes whole numbers like 0,1,2")
    if not args.quick and not args.data:
        ap.error("--data is required (or --quick)")
    pre_s = args.pretrain_seconds if args.pretrain_seconds is not None else (3.0 if args.quick else 300.0)
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 120.0)

    import torch

    from automl_vision.search.portfolio import load_portfolio
    from automl_vision.training import device as dev

    torch.set_num_threads(min(2, torch.get_num_threads()))
    entry = load_portfolio()[0]
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        if args.quick:
            target = tiny_generated_set(Path(tmp) / "sets" / "tiny-a")
            tiny_generated_set(Path(tmp) / "sets" / "tiny-b", seed=1)
        else:
            target = Path(args.data)
        if not ((target / "train").is_dir() and (target / "eval").is_dir()):
            ap.error(f"{target}: expected {target}/train/<class>/ and {target}/eval/<class>/")
        sources = source_sets(Path(args.sources) if args.sources else target.parent, target,
                              {s.strip() for s in args.exclude.split(",") if s.strip()})
        if not sources and any(a != "scratch" for a in arms):
            ap.error(f"no source sets beside {target} (each needs a train/<class>/ folder)")
        path = dev.choose()
        payload: dict[str, Any] = {
            "benchmark": "transfer", "machine": C.machine(), "quick": args.quick,
            "settings": {"set": target.name, "entry": entry["name"], "seconds": seconds, "pretrain_seconds": pre_s,
                         "seeds": seeds, "arms": arms, "execution_path": str(path),
                         "n_train": len(image_files(target / "train")), "n_eval": len(image_files(target / "eval"))},
            "runs": [],
        }
        weights = None
        if any(a != "scratch" for a in arms):
            weights, payload["pretraining"] = pretrain(entry, sources, pre_s, path)
            print(f"source network: {payload['pretraining']}", flush=True)
        out = Path(args.out) if args.out else C.default_path(f"transfer_{target.name}", args.quick)
        cfg, data, y_eval = target_data(entry, target)
        for seed in seeds:
            for arm in arms:
                run = fine_tune(cfg, data, y_eval, weights, arm, seed, seconds, path)
                payload["runs"].append(run)
                print(f"seed {seed} {arm}: eval {run['eval_accuracy']:.3f} (flip {run['eval_accuracy_flip']:.3f}), "
                      f"{run['epochs']} epochs", flush=True)
                payload["markdown"] = markdown(payload)
                payload["load_average_at_end"] = C.load_average()
                C.write_results("transfer", payload, out)
    print(payload["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
