"""Ensemble results: members and weights, ensemble versus best single model on validation
and test, and per-class metrics of both."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import NotAvailable, RunData, per_class_table, probability_kind
from automl_vision.rundir import final_fit_networks, tta_rules


def comparison(final: dict) -> pd.DataFrame:
    """Rows: metrics; columns: best single and ensemble on validation (and test)."""
    ens = final.get("ensemble") or {}
    cols = {
        "best single · validation": final.get("best_val") or {},
        "ensemble · validation": ens.get("val") or {},
    }
    if final.get("has_test"):
        cols["best single · test"] = final.get("best_test") or {}
        cols["ensemble · test"] = ens.get("test") or {}
    return pd.DataFrame(cols)


def tta_line(final: dict) -> str:
    """What flip test-time augmentation did, for each model, as decided on validation."""
    tta = final.get("tta") or {}
    if not tta.get("requested"):
        return "Flip test-time augmentation: not tried for this run."
    metric = final.get("metric", "the objective")
    parts = []
    for key, name in (("best", "best single model"), ("ensemble", "ensemble")):
        info = tta.get(key) or {}
        before, after = (info.get(k, {}).get(metric) for k in ("val_without", "val_with"))
        if before is None or after is None:
            continue
        parts.append(f"{'kept' if info.get('used') else 'not kept'} for the {name} "
                     f"(validation {metric} {before:.4f} without, {after:.4f} with)")
    # runs from before the rule was recorded kept it only where it improved validation
    rule = "; ".join(tta_rules(tta)) or "kept only where it improves the objective on validation"
    return "Flip test-time augmentation: " + ("; ".join(parts) or "tried") + \
        f". Rule: {rule}; the figures below include it where kept."


def final_fit_line(final: dict) -> str | None:
    """What the small-data regime's final fit did (None: the run had none)."""
    fit = final.get("final_fit")
    if not fit:
        return None
    if fit.get("skipped"):
        return f"Final fit (small-data regime): skipped — {fit['skipped']}."
    nets = final_fit_networks(fit)
    if nets:
        done = ", ".join((f"trial #{f.get('of_trial')}'s" if not f.get("copy") else
                          f"a fresh network of trial #{f.get('of_trial')}'s configuration")
                         + f" for {f.get('epochs')} epochs" for f in nets)
        searched = [f for f in nets if not f.get("copy")]
        return (f"Final fit (small-data regime), {'a pair' if len(nets) == 2 else f'{len(nets)} networks'}: the "
                f"networks of {done} were trained on all {fit.get('images')} labelled images, and their average "
                f"(the ensemble) is delivered. The ensemble's test scores on this page are "
                f"{'the pair' if len(searched) == 2 else 'the best model'}'s before the final fit (train split "
                "only): the honest, conservative estimate, since the delivered models have seen the test images.")
    return (f"Final fit (small-data regime): trial #{fit.get('of_trial')}'s network was trained further on all "
            f"{fit.get('images')} labelled images for {fit.get('epochs')} epochs, and that model is delivered. The "
            "test scores on this page are the network's before the final fit (train split only): the honest, "
            "conservative estimate, since the delivered model has seen the test images.")


def calibration_line(final: dict) -> str:
    """The temperature fitted on validation for each model, and what it did to the calibration error."""
    cal = final.get("calibration") or {}
    if not cal.get("requested"):
        return "Calibration: none for this run; probabilities are the networks' own."
    split = "test" if final.get("has_test") else "validation"
    prefix = "test" if split == "test" else "val"
    parts = []
    for key, name in (("best", "best single model"), ("ensemble", "ensemble")):
        info = cal.get(key) or {}
        before, after = info.get(f"{prefix}_ece_before"), info.get(f"{prefix}_ece_after")
        if "temperature" not in info or before is None or after is None:
            continue
        parts.append(f"temperature {info['temperature']:.3f} for the {name} ({split} ECE {before:.4f} -> {after:.4f})")
    return "Calibration: " + ("; ".join(parts) or "applied") + \
        ". Fitted on validation; it never changes a predicted class, and the figures below include it."


def per_class_both(run: RunData, split: str) -> pd.DataFrame:
    """Per-class precision, recall and F1 of the best model and the ensemble on a split."""
    classes = run.classes
    if split == "test":
        final = run.final_or_raise()
        best = final.get("best_test_detail", {}).get("per_class")
        ens = final.get("ensemble_test_detail", {}).get("per_class")
        if not best or not ens:
            raise NotAvailable("this run has no per-class test results (no test split)")
        b, e = pd.DataFrame(best).set_index("class"), pd.DataFrame(ens).set_index("class")
    else:
        probs = run.ensemble_val_probs()
        labels = run.val_labels()
        if labels is None or not probs or "ensemble" not in probs:
            raise NotAvailable("per-class validation metrics need final/val_labels.npy and the members' "
                               "val_probs.npy; this run directory was written by an older version or is incomplete")
        b = per_class_table(labels, probs["best"], classes).set_index("class")
        e = per_class_table(labels, probs["ensemble"], classes).set_index("class")
    out = pd.concat({"best single": b[["precision", "recall", "f1"]], "ensemble": e[["precision", "recall", "f1"]]},
                    axis=1)
    out[("", "support")] = b["support"]
    out.columns = [" ".join(c).strip() for c in out.columns]
    return out


def body() -> None:
    run = ui.current_run()
    st.title("Ensemble results")
    final = run.final_or_raise()
    ens = final.get("ensemble") or {}
    members = pd.DataFrame(ens.get("members") or [])
    metric = final.get("metric", run.metric)
    deliverable = final.get("deliverable")
    what = (f"the ensemble of {len(members)} models" if deliverable == "ensemble" else
            f"the best single model, trial #{final.get('best_trial')} ({final.get('best_model')})")
    (st.success if deliverable == "ensemble" else st.info)(f"Deliverable: **{what}** — {final.get('why', '')}.")
    if final.get("note"):
        st.warning(final["note"])
    if final_fit_line(final):
        st.info(final_fit_line(final))
    st.caption(tta_line(final))
    st.caption(calibration_line(final))

    st.subheader("Members")
    st.caption(f"Selection method: {ens.get('method', '?')} (chosen on validation probabilities)")
    if members.empty:
        st.info("The ensemble has no member.")
    else:
        left, right = st.columns([3, 2])
        left.dataframe(members, hide_index=True, width="stretch",
                       column_config={"weight": st.column_config.ProgressColumn(format="%.2f", min_value=0, max_value=1)})
        # a fresh network of a trial's configuration (a final fit's) is its own bar
        labels = [f"trial {r['trial']}" + (f" (fresh {int(r['copy'])})" if "copy" in r and pd.notna(r["copy"]) else "")
                  for r in members.to_dict("records")]
        fig = px.bar(members, x="weight", y=labels, orientation="h", height=90 + 36 * len(members),
                     text=members["weight"].map(lambda w: f"{w:.2f}"), labels={"y": ""})
        fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), xaxis_range=[0, 1], yaxis_type="category")
        right.plotly_chart(fig, width="stretch", key="weights", config={"displayModeBar": False})

    st.subheader("Ensemble versus best single model")
    table = comparison(final)
    st.dataframe(table.style.format("{:.4f}", na_rep="-").apply(
        lambda r: ["font-weight: bold" if r.name == metric else "" for _ in r], axis=1),
        width="stretch", height=38 + 35 * len(table))
    best = run.best()
    own = (f" (trial #{best['number']}'s own network scored {best['value']:.4f} on validation: the Overview and "
           "Leaderboard show the networks alone)") if best and best["number"] == final.get("best_trial") else ""
    st.caption(f"Objective: {metric} ({final.get('direction', run.direction)}), in bold. Scores of the models as "
               f"delivered: best single model {probability_kind(final, 'best')}, ensemble "
               f"{probability_kind(final, 'ensemble')}{own}. The test split was used once, after the model was "
               "chosen on validation.")

    st.subheader("Per-class metrics")
    splits = ["validation", "test"] if final.get("has_test") else ["validation"]
    for tab, split in zip(st.tabs(splits), splits):
        with tab:
            try:
                st.dataframe(per_class_both(run, "test" if split == "test" else "val").style.format(
                    "{:.3f}", subset=[c for c in ("best single precision", "best single recall", "best single f1",
                                                  "ensemble precision", "ensemble recall", "ensemble f1")]),
                    width="stretch")
            except NotAvailable as exc:
                st.info(str(exc))


ui.page(body)
