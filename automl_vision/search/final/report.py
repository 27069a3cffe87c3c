"""The test split's scoring count, the intervals of every accuracy, and the summary printed
at the end of a search."""

from __future__ import annotations

from typing import Any

from automl_vision.progress import make_console
from automl_vision.rundir import REPORT_SCHEMA, RunDir, final_fit_networks, read_json, tta_rules
from automl_vision.settings import format_duration


def test_touches(run_dir: RunDir) -> dict[str, Any]:
    """How many times this run's test split has now been scored (this time included), and a
    warning from the second time on: choices made after seeing a test score (another
    ``ensemble`` call, other options) make the next one optimistic. Counted in
    ``final/report.json``, which every scoring rewrites."""
    previous = read_json(run_dir.report, REPORT_SCHEMA) or {}
    count = int(previous.get("test_evaluations") or (1 if previous.get("best_test") else 0)) + 1
    if count == 1:
        return {"test_evaluations": 1}
    return {"test_evaluations": count,
            "test_warning": (f"the test split of this run has now been scored {count} times: a choice made after "
                             "seeing an earlier test score makes this one optimistic; for an unbiased figure, score "
                             "the delivered model once on new labelled images (predictor.evaluate or predict)")}


def accuracy_intervals(report: dict[str, Any], n_val: int, n_test: int) -> dict[str, list[float]]:
    """95% Wilson intervals of every accuracy in the report: ``{"best_val": [low, high, n], ...}``."""
    from automl_vision.evaluation import wilson_interval

    out: dict[str, list[float]] = {}
    places = (("best_val", report.get("best_val"), n_val), ("best_test", report.get("best_test"), n_test),
              ("ensemble_val", (report.get("ensemble") or {}).get("val"), n_val),
              ("ensemble_test", (report.get("ensemble") or {}).get("test"), n_test))
    for name, metrics, n in places:
        if metrics and "accuracy" in metrics and n:
            low, high = wilson_interval(float(metrics["accuracy"]), n)
            out[name] = [low, high, n]
    return out


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
    intervals = report.get("intervals") or {}
    for c in cols:
        table.add_column(c, justify="right")
        if c == "accuracy" and intervals:
            table.add_column("accuracy 95% CI", justify="right")
    split = "best_test" if has_test else "best_val"
    ens_info = report["ensemble"]
    ens_metrics = ens_info.get("test" if has_test else "val", {})
    members = ", ".join(f"#{mbr['trial']}x{mbr['weight']:.2f}" for mbr in ens_info["members"])
    best_extra = _extras(report, "best")
    ens_extra = _extras(report, "ensemble")
    key = "test" if has_test else "val"
    rows = [
        (f"best single: trial {report['best_trial']} ({report['best_model']}){best_extra}", report.get(split, {}),
         intervals.get(f"best_{key}")),
        (f"ensemble ({ens_info['method']}: {members}){ens_extra}", ens_metrics, intervals.get(f"ensemble_{key}")),
    ]
    from rich.markup import escape

    for name, mets, ci in rows:  # model labels and the [TTA, T] note are text, not rich markup
        cells = []
        for c in cols:
            cells.append(f"{mets[c]:.4f}" if c in mets else "-")
            if c == "accuracy" and intervals:
                cells.append(f"{ci[0]:.2f}-{ci[1]:.2f} (n={ci[2]})" if ci else "-")
        table.add_row(escape(name), *cells)
    console.print(table)
    cal = report.get("calibration") or {}
    if cal.get("requested") and "best" in cal:
        key = "test" if has_test and "test_ece_before" in cal["best"] else "val"
        console.print(
            "Calibration (temperature fitted on validation), ECE on "
            f"{'test' if key == 'test' else 'validation'}: best {cal['best'][key + '_ece_before']:.4f} -> "
            f"{cal['best'][key + '_ece_after']:.4f} (T={cal['best']['temperature']:.3f}), ensemble "
            f"{cal['ensemble'][key + '_ece_before']:.4f} -> {cal['ensemble'][key + '_ece_after']:.4f} "
            f"(T={cal['ensemble']['temperature']:.3f})"
        )
    tta = report.get("tta") or {}
    if tta.get("requested") and "best" in tta:
        parts = []
        for name in ("best", "ensemble"):
            t = tta[name]
            parts.append(f"{name} {t['val_without'].get(metric, float('nan')):.4f} -> {t['val_with'].get(metric, float('nan')):.4f} "
                         f"({'kept' if t['used'] else 'not kept'})")
        rules = tta_rules(tta)
        rule = f". Rule: {'; '.join(rules)}" if rules else ""  # runs from before the rule was recorded have none
        console.print(f"Flip test-time augmentation, validation {metric}: " + "; ".join(parts) + rule)
    refit = report.get("refit") or {}
    if refit.get("requested"):
        if refit.get("skipped"):
            console.print(f"[yellow]Refit skipped:[/] {refit['skipped']}")
        else:
            done = ", ".join(f"trial {d['trial']} ({d['epochs']} epochs{', reused' if d.get('reused') else ''})"
                             for d in refit.get("models", []))
            console.print(f"Refit on train + validation: {done}; test scores above are the refit models'.")
    ff = report.get("final_fit") or {}
    if ff.get("skipped"):
        console.print(f"[yellow]Final fit skipped:[/] {escape(ff['skipped'])}")
    elif final_fit_networks(ff):
        nets = final_fit_networks(ff)
        done = ", ".join((f"trial {f['of_trial']}'s" if not f.get("copy") else
                          f"a fresh network of trial {f['of_trial']}'s configuration")
                         + f" for {f['epochs']} epochs ({format_duration(f.get('seconds') or 0)}"
                         f"{', reused' if f.get('reused') else ''})" for f in nets)
        searched = [f for f in nets if not f.get("copy")]
        estimate = ("the pair's" if len(searched) == 2 else f"trial {nets[0]['of_trial']}'s network's")
        console.print(escape(
            f"Final fit (small-data regime), {'a pair' if len(nets) == 2 else f'{len(nets)} networks'}: {done}, "
            f"each network trained on all {ff['images']} labelled images; their average is delivered. The "
            f"ensemble's scores above are {estimate} before the final fit, trained on the train split only: the "
            f"honest estimate for the delivered models, which have seen every labelled image (the test split "
            f"included) and cannot be scored on them"
            + (" (conservative: the fresh networks have no counterpart the search trained, and an average of more "
               "networks is usually more accurate)." if len(searched) < len(nets) else ".")))
    elif ff:
        console.print(escape(
            f"Final fit (small-data regime): trial {ff['of_trial']}'s network trained further on all {ff['images']} "
            f"labelled images for {ff['epochs']} epochs ({format_duration(ff.get('seconds') or 0)}"
            f"{', reused' if ff.get('reused') else ''}). The scores above are that network's before the final fit, "
            f"trained on the train split only: the honest estimate for the delivered model, which has seen "
            f"every labelled image (the test split included) and cannot be scored on them."))
    if ff.get("pair_decision") and not ff.get("skipped"):
        paired = any(f.get("of_trial") != ff.get("of_trial") for f in final_fit_networks(ff))
        console.print(escape(f"Final fit, {'a pair' if paired else 'one searched network'}: {ff['pair_decision']}."),
                      style="dim")
    if ff.get("copies_decision") and not ff.get("skipped"):
        console.print(escape(f"Final fit, fresh networks: {ff['copies_decision']}."), style="dim")
    console.print(f"Deliverable: [bold]{report['deliverable']}[/] — {escape(report['why'])}.")
    if report.get("test_warning"):
        console.print(f"[yellow]Note:[/] {escape(report['test_warning'])}")
    if report.get("note"):
        console.print(f"[yellow]Note:[/] {report['note']}")
    if not refit.get("requested") and refit.get("command") and not ff:
        console.print(escape(f"Optional next step (about {format_duration(refit['estimate_seconds'])}): {refit['command']} "
                             "retrains the chosen models on train + validation; see docs/prediction-and-export.md."),
                      style="dim")


def _extras(report: dict[str, Any], name: str) -> str:
    parts = []
    if ((report.get("tta") or {}).get(name) or {}).get("used"):
        parts.append("flip TTA")
    t = ((report.get("calibration") or {}).get(name) or {}).get("temperature")
    if t is not None and t != 1.0:
        parts.append(f"T={t:.2f}")
    return f" [{', '.join(parts)}]" if parts else ""
