"""Leaderboard: one row a trial, filterable and sortable; selecting a trial opens its detail."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import MISSING, RunData, fmt_seconds, per_class_table, state_label
from automl_vision.rundir import LEADERBOARD

PICK = "trial_pick"
QP_TRIAL = "trial"  # ?trial=N opens that trial's detail: a link to share
KEY_PARAMS = ("optimizer", "batch_size", "schedule", "weight_decay", "label_smoothing", "ema")


def _select_row(table: pd.DataFrame) -> None:
    """A click on a table row selects that trial in the detail below."""
    rows = st.session_state["lb_table"].selection.rows
    if rows:
        st.session_state[PICK] = int(table.iloc[rows[0]]["trial"])


def leaderboard_table(run: RunData, df: pd.DataFrame) -> pd.DataFrame:
    """The rows shown: rank, trial, state and its note first, then the model and the numbers.

    ``df`` is :attr:`RunData.leaderboard` or a filtered part of it (its index is the rank).
    """
    metric = run.metric
    blank = lambda col: df[col].where(df[col].astype(str).str.strip() != "") if col in df else None  # noqa: E731
    out = pd.DataFrame({
        "rank": (df.index + 1).astype(int),
        "trial": df["number"].astype(int),
        "state": df["state"].map(state_label),
        "note": df.get("reason", pd.Series([""] * len(df), index=df.index)).fillna("").map(_note),
        "model": blank("model"),
        "family": blank("family"),
        metric: pd.to_numeric(df["value"], errors="coerce"),
    })
    for i, name in enumerate(run.objectives[1:], start=1):
        if f"objective_{i}" in df:
            out[name] = pd.to_numeric(df[f"objective_{i}"], errors="coerce")
    out["epochs"] = pd.to_numeric(df["epochs"], errors="coerce")
    out["seconds"] = pd.to_numeric(df["seconds"], errors="coerce")
    out["params (M)"] = pd.to_numeric(df["params_count"], errors="coerce") / 1e6
    out["image size"] = pd.to_numeric(df.get("image_size"), errors="coerce") if "image_size" in df else None
    out["aug"] = blank("aug")
    for p in KEY_PARAMS:
        if f"param_{p}" in df:
            out[p] = df[f"param_{p}"]
    lr_cols = [c for c in df.columns if c.startswith("param_lr.")]
    if lr_cols:
        out["lr"] = df[lr_cols].bfill(axis=1).iloc[:, 0]
    # the other validation metrics come after the columns people sort and filter on
    for c in sorted(c for c in df.columns if c.startswith("val_") and c != f"val_{metric}"):
        out[c[4:]] = pd.to_numeric(df[c], errors="coerce")
    return out.reset_index(drop=True)


def _note(reason: str) -> str:
    """The note of a trial, shortened as the terminal's leaderboard does for the pruner's own."""
    reason = str(reason)
    return "early-stopped by the pruner" + reason[len("pruned"):] if reason.startswith("pruned after epoch") else reason


def body() -> None:
    run = ui.current_run()
    st.title("Leaderboard")
    df = run.leaderboard
    if df.empty:
        st.info("No trial yet: the first row appears when the first trial starts."
                + (" This page refreshes on its own." if run.is_running() else ""))
        return
    st.caption(f"Validation {run.metric} of each trial's own network (no TTA or calibration), "
               f"{'higher' if run.direction == 'maximize' else 'lower'} is better. Rows are in rank order (complete "
               "trials best first, then pruned, running, failed, skipped and not run); click a column header to "
               f"sort by it (the rank column restores the order), or a row to open the trial. {MISSING}: no value.")
    f1, f2, f3 = st.columns(3)
    families = f1.multiselect("Model family", run.options("family"), key="lb_family")
    states = f2.multiselect("State", run.options("state"), key="lb_state", format_func=state_label)
    augs = f3.multiselect("Augmentation preset", run.options("aug"), key="lb_aug")
    table = leaderboard_table(run, run.filtered(families, states, augs))
    st.caption(f"{len(table)} of {len(df)} trials")
    st.dataframe(
        table,
        key="lb_table",
        on_select=lambda: _select_row(table),
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=min(600, 38 + 35 * max(1, len(table))),
        placeholder=MISSING,
        column_config={
            "rank": st.column_config.NumberColumn(width=48, pinned=True),
            "trial": st.column_config.NumberColumn(width=48, pinned=True),
            "state": st.column_config.TextColumn(width=120),
            "note": st.column_config.TextColumn(width=260, help="why the trial stopped, was pruned, skipped or failed"),
            run.metric: st.column_config.NumberColumn(format="%.4f"),
            "seconds": st.column_config.NumberColumn("time (s)", format="%.1f"),
            "params (M)": st.column_config.NumberColumn(format="%.3f"),
            "image size": st.column_config.NumberColumn(format="%d"),
            "lr": st.column_config.NumberColumn(format="%.2e"),
            "weight_decay": st.column_config.NumberColumn(format="%.2e"),
            **{c: st.column_config.NumberColumn(format="%.4f") for c in table.columns
               if c not in (run.metric, "rank", "trial", "epochs", "seconds", "params (M)", "image size", "lr",
                            "weight_decay", "batch_size", "label_smoothing") and pd.api.types.is_float_dtype(table[c])},
        },
    )
    st.download_button(f"Download {LEADERBOARD}", run.leaderboard.to_csv(index=False), LEADERBOARD, "text/csv")
    st.divider()
    trial_detail(run, [int(n) for n in table["trial"]] or run.trial_numbers())


def _trial_label(run: RunData, number: int) -> str:
    row = run.leaderboard[run.leaderboard["number"] == number]
    if row.empty:
        return f"#{number}"
    r = row.iloc[0]
    value = r.get("value")
    v = f" · {float(value):.4f}" if pd.notna(value) and str(value) != "" else ""
    return f"#{number} · {r.get('model') or r.get('family') or ''} · {state_label(r['state'])}{v}"


def _pick_from_link(numbers: list[int]) -> None:
    """?trial=N in the address (a shared link, or the address edited) selects that trial."""
    wanted = ui.query_value(QP_TRIAL)
    if wanted is not None and wanted.isdigit() and int(wanted) in numbers:
        st.session_state[PICK] = int(wanted)


def trial_link(run: RunData, number: int) -> str:
    """The page-relative link that opens this trial (with the run when it is not the first one)."""
    link = f"leaderboard?{QP_TRIAL}={number}"
    choice = st.query_params.get(ui.QP_RUN)
    if choice:
        from urllib.parse import quote

        link += f"&{ui.QP_RUN}={quote(choice)}"
    return link


def trial_detail(run: RunData, numbers: list[int]) -> None:
    if not numbers:
        return
    _pick_from_link(numbers)
    if st.session_state.get(PICK) not in numbers:
        st.session_state[PICK] = numbers[0]
    number = st.selectbox("Trial", numbers, key=PICK, format_func=lambda n: _trial_label(run, n))
    ui.set_query(QP_TRIAL, str(number))
    t = run.trial(number)
    rec, row = t["record"], t["row"]
    state = str(row.get("state") or rec.get("state") or "UNKNOWN")
    st.header(f"Trial {number}: {row.get('model') or rec.get('model') or ''}")
    st.caption(f"[Link to this trial]({trial_link(run, number)}) — the address bar holds it too.")
    c1, c2, c3, c4, c5 = st.columns(5)
    value = row.get("value")
    c1.metric(f"Validation {run.metric}", f"{float(value):.4f}" if value is not None and pd.notna(value) else MISSING,
              help="the trial's own network on the validation split, without TTA or calibration")
    c2.metric("State", state_label(state))
    c3.metric("Epochs run", int(row["epochs"]) if pd.notna(row.get("epochs")) else MISSING)
    c4.metric("Time", fmt_seconds(row.get("seconds")))
    pc = row.get("params_count")
    c5.metric("Parameters", f"{float(pc) / 1e6:.2f} M" if pc is not None and pd.notna(pc) else MISSING)
    reason = rec.get("reason") or row.get("reason")
    if state == "FAIL":
        st.error(f"Why it failed: {reason or 'no reason recorded'}")
    elif state == "SKIPPED":
        st.info(f"Skipped for lack of time, never trained (stored as pruned with 0 epochs): {reason}")
    elif state == "NOT_RUN":
        st.info(f"Not run: queued, and the search ended before it started. {reason or ''}")
    elif state == "COMPLETE":
        if reason:  # early stopping or a schedule grown to the budget: a note, not why it stopped
            st.caption(f"Note: {reason}")
    elif reason:
        st.info(f"Why it stopped: {reason}")
    if rec.get("traceback"):
        with st.expander("Traceback of the failed trial"):
            st.code(rec["traceback"], language="text")

    curves, speed, params, metrics = st.tabs(["Learning curves", "Time and throughput", "Parameters", "Metrics"])
    with curves:
        hist = pd.DataFrame(t["history"])
        if hist.empty:
            st.info("No epoch finished yet for this trial.")
        else:
            val_cols = [c for c in hist.columns if c.startswith("val_")]
            default = f"val_{run.metric}" if f"val_{run.metric}" in val_cols else (val_cols[0] if val_cols else None)
            chosen = st.multiselect("Curves", val_cols + [c for c in ("train_loss", "lr") if c in hist],
                                    default=[c for c in (default, "train_loss") if c], key=f"curves_{number}")
            st.plotly_chart(curve_figure(hist, chosen), width="stretch", key=f"curve_fig_{number}")
    with speed:
        hist = pd.DataFrame(t["history"])
        if hist.empty or "train_seconds" not in hist:
            st.info("No timed epoch yet for this trial.")
        else:
            st.plotly_chart(speed_figure(hist), width="stretch", key=f"speed_fig_{number}")
            st.caption("Seconds per epoch (training + validation) and training throughput, from history.json. A "
                       "sudden drop in throughput means the machine got busy.")
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


def epoch_axis(fig: go.Figure, epochs: int) -> None:
    """Whole epochs; one tick each only for short schedules, automatic ticks beyond."""
    if epochs <= 20:
        fig.update_xaxes(dtick=1)
    else:
        fig.update_xaxes(tickformat="d", nticks=12)


def curve_figure(hist: pd.DataFrame, chosen: list[str]) -> go.Figure:
    fig = go.Figure()
    palette = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037", "#ad1457"]
    long = len(hist) > 60
    for i, c in enumerate(chosen):
        train = c in ("train_loss", "lr")
        # training curves dashed on their own axis, so they never read as a validation curve
        fig.add_trace(go.Scatter(x=hist["epoch"], y=hist[c], mode="lines" if long else "lines+markers", name=c,
                                 line=dict(color=palette[i % len(palette)], dash="dash" if train else "solid"),
                                 yaxis="y2" if train else "y"))
    epoch_axis(fig, int(hist["epoch"].max()))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                      yaxis_title="validation", yaxis2=dict(title="train", overlaying="y", side="right"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def speed_figure(hist: pd.DataFrame) -> go.Figure:
    seconds = hist["train_seconds"] + hist.get("eval_seconds", 0)
    fig = go.Figure()
    mode = "lines" if len(hist) > 60 else "lines+markers"
    fig.add_trace(go.Scatter(x=hist["epoch"], y=seconds, name="seconds per epoch", mode=mode,
                             line=dict(color="#1565c0")))
    if "images_per_second" in hist:
        fig.add_trace(go.Scatter(x=hist["epoch"], y=hist["images_per_second"], name="training images/s", mode=mode,
                                 line=dict(color="#ef6c00", dash="dash"), yaxis="y2"))
    epoch_axis(fig, int(hist["epoch"].max()))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="epoch",
                      yaxis=dict(title="seconds per epoch", rangemode="tozero"),
                      yaxis2=dict(title="images/s", overlaying="y", side="right", rangemode="tozero"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


ui.page(body)
