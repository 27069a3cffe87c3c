"""After the search: pick the deliverable, touch the test split once, write the report.

1. the best complete trial by the validation objective is copied to ``best/``;
2. an ensemble is selected on validation probabilities (``ensemble.json``);
3. the best single model and the ensemble are evaluated once on the test split;
4. the deliverable is the ensemble only when it beats the best single model on
   validation; ``final/report.json`` says which and why.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np
import torch

from automl_vision import ensemble as ens
from automl_vision.data.prepare import PreparedData
from automl_vision.evaluation import compute_metrics, is_better, per_class
from automl_vision.models import load_model, write_preprocessing
from automl_vision.plugins import PluginManager
from automl_vision.progress import make_console
from automl_vision.rundir import RunDir, read_json, write_json, write_npy
from automl_vision.training.device import ExecPath
from automl_vision.training.inference import nhwc_to_tensor, predict_probs, stats_tensors


def complete_trials(run_dir: RunDir) -> list[dict[str, Any]]:
    out = []
    for rec in run_dir.iter_trials():
        tdir = run_dir.trial_dir(rec["number"])
        if rec.get("state") == "COMPLETE" and (tdir / "model.json").exists() and (tdir / "val_probs.npy").exists():
            out.append(rec)
    return out


def test_probs(run_dir: RunDir, number: int, data: PreparedData, path: ExecPath, pm: PluginManager) -> np.ndarray:
    model, spec = load_model(run_dir.trial_dir(number), pm)
    model = model.to(path.torch_device, memory_format=torch.channels_last if path.channels_last else torch.contiguous_format)
    x = nhwc_to_tensor(np.asarray(data.images(spec["image_size"])[data.split_index["test"]]))
    mean, std = stats_tensors(spec["mean"], spec["std"], spec["in_chans"], path.torch_device)
    return predict_probs(model, x, mean, std, path)


def finalize(run_dir: RunDir, data: PreparedData, pm: PluginManager, path: ExecPath, metric: str,
             method: str = "greedy", max_members: int = 5, log=print) -> dict[str, Any]:
    t0 = time.time()
    m = pm.metrics.get(metric)
    trials = complete_trials(run_dir)
    report: dict[str, Any] = {"metric": metric, "direction": m.direction, "has_test": data.has_test(), "finished": t0}
    if not trials:
        report["error"] = "no trial finished; nothing to deliver (give the search more time or trials)"
        write_json(run_dir.final_dir / "report.json", report)
        return report
    y_val = data.labels[data.split_index["val"]]
    val = {r["number"]: run_dir.read_val_probs(r["number"]).astype(np.float64) for r in trials}
    val = {n: p for n, p in val.items() if p is not None and p.shape[0] == len(y_val)}
    best_n = None
    best_v = None
    for n, p in val.items():
        v = float(m.fn(y_val, p))
        if best_n is None or is_better(v, best_v, m.direction):
            best_n, best_v = n, v
    best_rec = next(r for r in trials if r["number"] == best_n)

    # best/: everything needed to load and predict without the study
    best_dir = run_dir.best_dir
    tmp = run_dir.path / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("model.json", "weights.safetensors", "config.json", "metrics.json"):
        src = run_dir.trial_dir(best_n) / name
        if src.exists():
            shutil.copy2(src, tmp / name)
    write_preprocessing(tmp / "preprocessing.json", read_json(tmp / "model.json"))
    shutil.rmtree(best_dir, ignore_errors=True)
    tmp.rename(best_dir)

    weights = ens.select(method, val, y_val, m.fn, m.direction, max_members=max_members)
    ens_val = ens.combine(val, weights)
    ens_val_metrics = compute_metrics(y_val, ens_val, pm)
    single_val_metrics = compute_metrics(y_val, val[best_n], pm)
    use_ensemble = len(weights) > 1 and is_better(ens_val_metrics[metric], single_val_metrics[metric], m.direction)
    ensemble_info = {
        "method": method,
        "members": [{"trial": n, "weight": w, "model": next((r.get("model") for r in trials if r["number"] == n), "")}
                    for n, w in sorted(weights.items(), key=lambda kv: -kv[1])],
        "val": ens_val_metrics,
    }

    report.update(
        best_trial=best_n,
        best_model=best_rec.get("model"),
        best_val=single_val_metrics,
        ensemble=ensemble_info,
        deliverable="ensemble" if use_ensemble else "best",
        why=(
            f"the ensemble of {len(weights)} models beats the best single model on validation "
            f"({ens_val_metrics[metric]:.4f} vs {single_val_metrics[metric]:.4f})"
            if use_ensemble
            else (
                "only one model was selected for the ensemble" if len(weights) <= 1 else
                f"the ensemble does not beat the best single model on validation "
                f"({ens_val_metrics[metric]:.4f} vs {single_val_metrics[metric]:.4f})"
            )
        ),
    )
    if data.has_test():
        y_test = data.labels[data.split_index["test"]]
        test = {n: test_probs(run_dir, n, data, path, pm) for n in set(weights) | {best_n}}
        best_test = test[best_n]
        ens_test = ens.combine(test, weights)
        write_npy(run_dir.final_dir / "test_probs_best.npy", best_test.astype(np.float32))
        write_npy(run_dir.final_dir / "test_probs_ensemble.npy", ens_test.astype(np.float32))
        write_npy(run_dir.final_dir / "test_labels.npy", y_test)
        report["best_test"] = compute_metrics(y_test, best_test, pm)
        report["ensemble"]["test"] = compute_metrics(y_test, ens_test, pm)
        report["best_test_detail"] = per_class(y_test, best_test, data.classes)
        report["ensemble_test_detail"] = per_class(y_test, ens_test, data.classes)
        report["test_keys"] = [data.samples[i].key for i in data.split_index["test"]]
    else:
        report["note"] = (
            "no test split: the scores below are validation scores, which are optimistic because the "
            "validation split was used to select the model"
        )
    write_json(run_dir.path / "ensemble.json", {**ensemble_info, "selected": use_ensemble, "metric": metric})
    report["seconds"] = time.time() - t0
    write_json(run_dir.final_dir / "report.json", report)
    return report


def print_summary(report: dict[str, Any], console=None) -> None:
    from rich.table import Table

    console = console or make_console()
    if report.get("error"):
        console.print(f"[bold red]{report['error']}[/]")
        return
    metric = report["metric"]
    has_test = report.get("has_test")
    table = Table(title="Final evaluation" + (" on the held-out test split" if has_test else " (validation only)"))
    table.add_column("model")
    cols = [metric] + [c for c in ("accuracy", "balanced_accuracy", "f1_macro", "log_loss", "ece") if c != metric]
    for c in cols:
        table.add_column(c, justify="right")
    split = "best_test" if has_test else "best_val"
    ens_metrics = report["ensemble"].get("test" if has_test else "val", {})
    members = ", ".join(f"#{mbr['trial']}x{mbr['weight']:.2f}" for mbr in report["ensemble"]["members"])
    rows = [
        (f"best single: trial {report['best_trial']} ({report['best_model']})", report.get(split, {})),
        (f"ensemble ({report['ensemble']['method']}: {members})", ens_metrics),
    ]
    for name, mets in rows:
        table.add_row(name, *[f"{mets[c]:.4f}" if c in mets else "-" for c in cols])
    console.print(table)
    console.print(f"Deliverable: [bold]{report['deliverable']}[/] — {report['why']}.")
    if report.get("note"):
        console.print(f"[yellow]Note:[/] {report['note']}")
