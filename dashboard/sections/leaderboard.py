"""Leaderboard: one row a trial, filterable and sortable; selecting a trial opens its detail."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import ui
from dashboard.data import RunData, fmt_seconds, per_class_table

PICK = "trial_pick"
KEY_PARAMS = ("optimizer", "batch_size", "schedule", "weight_decay", "label_smoothing", "ema")


def _select_row(table: pd.DataFrame) -> None:
    """A click on a table row selects that trial in the detail below."""
    rows = st.session_state["lb_table"].selection.rows
    if rows:
        st.session_state[PICK] = int(table.iloc[rows[0]]["trial"])


def leaderboard_table(run: RunData, df: pd.DataFrame) -> pd.DataFrame:
    metric = run.metric
    out = pd.DataFrame({
        "trial": df["number"].astype(int),
        "state": df["state"].str.lower(),
        "model": df["model"].fillna(""),
        "family": df["family"].fillna(""),
        metric: pd.to_numeric(df["value"], errors="coerce"),
    })
    for i, name in enumerate(run.objectives[1:], start=1):
        if f"objective_{i}" in df:
            out[name] = pd.to_numeric(df[f"objective_{i}"], errors="coerce")
    out["epochs"] = pd.to_numeric(df["epochs"], errors="coerce")
    out["seconds"] = pd.to_numeric(df["seconds"], errors="coerce")
    out["params (M)"] = pd.to_numeric(df["params_count"], errors="coerce") / 1e6
    out["image size"] = df.get("image_size")
    out["aug"] = df["aug"].fillna("")
    for p in KEY_PARAMS:
        if f"param_{p}" in df:
            out[p] = df[f"param_{p}"]
    lr_cols = [c for c in df.columns if c.startswith("param_lr.")]
    if lr_cols:
        out["lr"] = df[lr_cols].bfill(axis=1).iloc[:, 0]
    # the other validation metrics come after the columns people sort and filter on
    for c in sorted(c for c in df.columns if c.startswith("val_") and c != f"val_{metric}"):
        out[c[4:]] = pd.to_numeric(df[c], errors="coerce")
    out["note"] = df.get("reason", pd.Series([""] * len(df), index=df.index)).fillna("")
    return out.reset_index(drop=True)


def body() -> None:
    run = ui.current_run()
    st.title("Leaderboard")
    df = run.leaderboard
    if df.empty:
        st.info("No trial yet: the first row appears when the first trial starts."
                + (" This page refreshes on its own." if run.is_running() else ""))
        return
    st.caption(f"Validation {run.metric}, {'higher' if run.direction == 'maximize' else 'lower'} is better. "
               "Click a column header to sort, or a row to open the trial.")
    f1, f2, f3, f4 = st.columns([2, 2, 2, 2])
    families = f1.multiselect("Model family", run.options("family"), key="lb_family")
    states = f2.multiselect("State", run.options("state"), key="lb_state")
    augs = f3.multiselect("Augmentation preset", run.options("aug"), key="lb_aug")
    table = leaderboard_table(run, run.filtered(families, states, augs))
    sort_options = ["rank"] + [c for c in table.columns if c not in ("note",)]
    sort_by = f4.selectbox("Sort by", sort_options, key="lb_sort",
                           help="rank: complete trials best first, then pruned, running and failed")
    ascending = f4.toggle("Ascending", key="lb_ascending", disabled=sort_by == "rank")
    if sort_by != "rank":
        table = table.sort_values(sort_by, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)
    st.caption(f"{len(table)} of {len(df)} trials")
    st.dataframe(
        table,
        key="lb_table",
        on_select=lambda: _select_row(table),
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=min(600, 38 + 35 * max(1, len(table))),
        column_config={
            run.metric: st.column_config.NumberColumn(format="%.4f"),
            "seconds": st.column_config.NumberColumn("time (s)", format="%.1f"),
            "params (M)": st.column_config.NumberColumn(format="%.3f"),
            "lr": st.column_config.NumberColumn(format="%.2e"),
            "weight_decay": st.column_config.NumberColumn(format="%.2e"),
            **{c: st.column_config.NumberColumn(format="%.4f") for c in table.columns
               if c not in (run.metric, "trial", "epochs", "seconds", "params (M)", "image size", "lr", "weight_decay",
                            "batch_size", "label_smoothing") and pd.api.types.is_float_dtype(table[c])},
        },
    )
    st.download_button("Download leaderboard.csv", run.leaderboard.to_csv(index=False), "leaderboard.csv", "text/csv")
    st.divider()
    trial_detail(run, [int(n) for n in table["trial"]] or run.trial_numbers())


def _trial_label(run: RunData, number: int) -> str:
    row = run.leaderboard[run.leaderboard["number"] == number]
    if row.empty:
        return f"#{number}"
    r = row.iloc[0]
    value = r.get("value")
    v = f" · {float(value):.4f}" if pd.notna(value) and str(value) != "" else ""
    return f"#{number} · {r.get('model') or r.get('family') or ''} · {str(r['state']).lower()}{v}"


def trial_detail(run: RunData, numbers: list[int]) -> None:
    if not numbers:
        return
    if st.session_state.get(PICK) not in numbers:
        st.session_state[PICK] = numbers[0]
    number = st.selectbox("Trial", numbers, key=PICK, format_func=lambda n: _trial_label(run, n))
    t = run.trial(number)
    rec, row = t["record"], t["row"]
    state = str(row.get("state") or rec.get("state") or "unknown")
    st.header(f"Trial {number}: {row.get('model') or rec.get('model') or ''}")
    c1, c2, c3, c4, c5 = st.columns(5)
    value = row.get("value")
    c1.metric(f"Validation {run.metric}", f"{float(value):.4f}" if value is not None and pd.notna(value) else "-")
    c2.metric("State", state.lower())
    c3.metric("Epochs run", int(row["epochs"]) if pd.notna(row.get("epochs")) else "-")
    c4.metric("Time", fmt_seconds(row.get("seconds")))
    pc = row.get("params_count")
    c5.metric("Parameters", f"{float(pc) / 1e6:.2f} M" if pc is not None and pd.notna(pc) else "-")
    reason = rec.get("reason") or row.get("reason")
    if reason:
        (st.error if state == "FAIL" else st.info)(f"Why it stopped: {reason}")
    if rec.get("traceback"):
        with st.expander("Traceback of the failed trial"):
            st.code(rec["traceback"], language="text")

    curves, params, metrics = st.tabs(["Learning curves", "Parameters", "Metrics"])
    with curves:
        hist = pd.DataFrame(t["history"])
        if hist.empty:
            st.info("No epoch finished yet for this trial.")
        else:
            val_cols = [c for c in hist.columns if c.startswith("val_")]
            default = f"val_{run.metric}" if f"val_{run.metric}" in val_cols else (val_cols[0] if val_cols else None)
            chosen = st.multiselect("Curves", val_cols + [c for c in ("train_loss", "lr") if c in hist],
                                    default=[c for c in (default, "train_loss") if c], key=f"curves_{number}")
            fig = go.Figure()
            palette = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"]
            for i, c in enumerate(chosen):
                train = c in ("train_loss", "lr")
                # training curves dashed on their own axis, so they never read as a validation curve
                fig.add_trace(go.Scatter(x=hist["epoch"], y=hist[c], mode="lines+markers", name=c,
                                         line=dict(color=palette[i % len(palette)], dash="dash" if train else "solid"),
                                         yaxis="y2" if train else "y"))
            fig.update_xaxes(dtick=1)
            fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                              yaxis_title="validation", yaxis2=dict(title="train", overlaying="y", side="right"),
                              legend=dict(orientation="h"))
            st.plotly_chart(fig, width="stretch", key=f"curve_fig_{number}")
    with params:
        p = t["params"]
        if p:
            st.dataframe(pd.DataFrame({"value": {k: str(v) for k, v in sorted(p.items())}}), width="stretch")
        else:
            st.info("No parameters recorded for this trial.")
        if t["config"]:
            with st.expander("config.json (the full sampled configuration)"):
                st.json(t["config"], expanded=False)
        if t["model"]:
            with st.expander("model.json (architecture and preprocessing)"):
                st.json(t["model"], expanded=False)
    with metrics:
        mets = rec.get("metrics") or {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        if mets:
            st.dataframe(pd.DataFrame({"validation": mets}), width="stretch")
        detail = t["metrics"] or {}
        if detail.get("per_class"):
            st.caption("Per-class metrics on the validation split")
            st.dataframe(pd.DataFrame(detail["per_class"]), width="stretch", hide_index=True)
        elif not mets:
            st.info("No metrics yet: they are written when the trial finishes an epoch.")
        vp = run.rd.read_val_probs(number) if run.rd else None
        labels = run.val_labels()
        if not detail.get("per_class") and vp is not None and labels is not None and len(labels) == len(vp):
            st.dataframe(per_class_table(labels, vp, run.classes), width="stretch", hide_index=True)


ui.page(body)
