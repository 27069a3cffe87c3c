"""Compare runs: two or more run directories side by side."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import MISSING, compare_table, dataset_differences


def body() -> None:
    st.title("Compare runs")
    choices = ui.run_choices()
    if len(choices) < 2:
        st.info("Comparing needs two or more runs: add another run directory in the sidebar (it stays in the page's "
                "address, so a reload or a shared link keeps it), or start the dashboard with several, e.g. "
                "`automl-vision dashboard runs/a runs/b`.")
        return
    picked = st.multiselect("Runs", choices, default=choices, key="cmp_runs", format_func=ui._run_label)
    runs, problems = [], []
    for c in picked:
        r = ui.load_run(c)
        if r.problem():
            problems.append(f"{c}: {r.problem()}")
        else:
            runs.append(r)
    for p in problems:
        st.warning(p)
    if len(runs) < 2:
        st.info("Pick at least two runs that have data.")
        return
    for problem in dataset_differences(runs):
        st.warning(problem)
    metrics = {r.metric for r in runs}
    if len(metrics) > 1:
        st.warning(f"The runs optimise different objectives ({', '.join(sorted(metrics))}): compare with care.")
    table = compare_table(runs)
    st.dataframe(table, width="stretch", height=38 + 35 * len(table), placeholder=MISSING)
    st.caption("skipped: trials not trained for lack of time. Best trial's score: its own network; best single and "
               "ensemble: the delivered models (with TTA or calibration where the run kept them).")

    st.subheader("Best validation score so far, by trial")
    fig = go.Figure()
    longest = 1
    for i, r in enumerate(runs):
        df = r.leaderboard
        df = df[df["state"] == "COMPLETE"].copy()
        if df.empty:
            continue
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df = df.dropna(subset=["value"]).sort_values("number")
        best = df["value"].cummax() if r.direction == "maximize" else df["value"].cummin()
        longest = max(longest, len(df))
        fig.add_trace(go.Scatter(x=list(range(1, len(df) + 1)), y=best, mode="lines+markers", line_shape="hv",
                                 name=f"{r.label} ({r.metric})",
                                 line=dict(color=px.colors.qualitative.D3[i % len(px.colors.qualitative.D3)])))
    if longest <= 20:
        fig.update_xaxes(dtick=1)
    # the legend above the plot: below it, it would cover the axis title
    fig.update_layout(xaxis_title="complete trials", yaxis_title="best validation score (trials' own networks)",
                      height=400, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    st.plotly_chart(fig, width="stretch", key="cmp_history")

    rows = []
    for r in runs:
        f = r.final if r.final and not r.final.get("error") else None
        if not f:
            continue
        split = "test" if f.get("has_test") else "val"
        for who, mets in (("best single", f.get(f"best_{split}") or {}), ("ensemble", (f.get("ensemble") or {}).get(split) or {})):
            for m in ("accuracy", "balanced_accuracy", "f1_macro"):
                if m in mets:
                    rows.append({"run": r.label, "model": who, "metric": f"{m} ({split})", "value": mets[m]})
    if rows:
        st.subheader("Final evaluation")
        fig = px.bar(pd.DataFrame(rows), x="metric", y="value", color="run", pattern_shape="model", barmode="group",
                     height=380)
        fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1],
                          legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
        st.plotly_chart(fig, width="stretch", key="cmp_final")


ui.page(body)
