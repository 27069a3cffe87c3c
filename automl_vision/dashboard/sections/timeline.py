"""Timeline: what ran when. Trials as bars on wall-clock time, one lane per worker, coloured
by state; the final steps; the time budget and the moment trials had to stop; time per state."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import MISSING, STATE_COLOURS, STATES, RunData, fmt_seconds, state_label

FINAL = "final steps"


def _when(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds)


def timeline_figure(run: RunData) -> go.Figure:
    tl = run.timeline()
    df = pd.DataFrame({
        "lane": tl["worker"], "state": tl["state"].map(state_label), "trial": tl["trial"].map(lambda n: f"#{n}"),
        "model": tl["model"], "from": tl["start"].map(_when), "to": tl["end"].map(_when),
        "time": tl["seconds"].map(fmt_seconds),
    })
    lanes = sorted(df["lane"].unique())
    span = run.final_span()
    if span:
        df = pd.concat([df, pd.DataFrame([{"lane": FINAL, "state": FINAL, "trial": "", "model": "selection, TTA, "
                                           "calibration, test evaluation", "from": _when(span[0]),
                                           "to": _when(span[1]), "time": fmt_seconds(span[1] - span[0])}])],
                       ignore_index=True)
        lanes.append(FINAL)
    # a skipped trial lasts a second or two: invisible as a bar, so it is a marker
    skipped = df["state"] == state_label("SKIPPED")
    order = [state_label(s) for s in STATES] + [FINAL]
    fig = px.timeline(df[~skipped], x_start="from", x_end="to", y="lane", color="state",
                      color_discrete_map=STATE_COLOURS, hover_data={"trial": True, "model": True, "time": True,
                                                                    "lane": False, "from": False, "to": False},
                      category_orders={"state": order, "lane": lanes})
    if skipped.any():
        part = df[skipped]
        fig.add_trace(go.Scatter(x=part["from"], y=part["lane"], mode="markers", name=state_label("SKIPPED"),
                                 marker=dict(symbol="x-thin-open", size=11, line=dict(width=2),
                                             color=STATE_COLOURS[state_label("SKIPPED")]),
                                 text=part["trial"], customdata=part[["model"]],
                                 hovertemplate="%{text} skipped (no time): %{customdata[0]}<extra></extra>"))
    marks = run.budget_marks()
    lines = [("trials_stop", "trials stop (the rest is kept for the final steps)", "dot"),
             ("deadline", "time budget ends", "solid")]
    for i, (key, text, dash) in enumerate(lines):
        if key in marks:
            x = _when(marks[key])
            fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color="#c62828", dash=dash))
            fig.add_annotation(x=x, y=1, yref="paper", text=text, showarrow=False, yanchor="bottom",
                               xanchor="right" if i == 0 else "left", font=dict(color="#c62828", size=12))
    if run.is_running():
        now = _when(run.loaded_at)
        fig.add_shape(type="line", x0=now, x1=now, y0=0, y1=1, yref="paper", line=dict(color="#1565c0", dash="dash"))
        fig.add_annotation(x=now, y=0, yref="paper", text="now", showarrow=False, yanchor="top")
    fig.update_yaxes(title=None, autorange="reversed", automargin=True)
    fig.update_xaxes(title=None, automargin=True)
    # the legend at the right, where it can cover neither the time axis nor the budget lines' labels
    fig.update_layout(height=170 + 46 * len(lanes), margin=dict(l=10, r=10, t=40, b=10), legend_title_text="state",
                      barmode="overlay")
    return fig


def body() -> None:
    run = ui.current_run()
    st.title("Timeline")
    tl = run.timeline()
    if tl.empty:
        st.info("No trial has started yet: the timeline fills in as trials run."
                + (" This page refreshes on its own." if run.is_running() else ""))
        return
    workers = tl["worker"].nunique()
    marks = run.budget_marks()
    budget = (f" The red lines: trials had to stop {fmt_seconds(marks['deadline'] - marks['trials_stop'])} before the "
              f"end of the {fmt_seconds(marks['deadline'] - marks['started'])} time budget, to leave time for the "
              "final steps." if marks else " This run has no time budget.")
    st.caption(f"{workers} worker{'s' if workers > 1 else ''}: one lane each, trials as bars from start to end, "
               f"coloured by state; skipped trials (no time left to train them) as crosses.{budget}")
    st.plotly_chart(timeline_figure(run), width="stretch", key="timeline")

    st.subheader("Time per state")
    spent = run.time_by_state()
    total = spent["seconds"].sum()
    left, right = st.columns([1, 1])
    with left:
        fig = px.bar(spent, x="seconds", y="what", orientation="h", color="what", color_discrete_map=STATE_COLOURS,
                     text=spent["seconds"].map(fmt_seconds), height=80 + 40 * len(spent))
        fig.update_layout(showlegend=False, margin=dict(l=10, r=10, t=10, b=10), yaxis_title=None,
                          xaxis_title="seconds (workers in parallel add up)")
        fig.update_yaxes(automargin=True)
        st.plotly_chart(fig, width="stretch", key="time_by_state", config={"displayModeBar": False})
    with right:
        shown = spent.assign(time=spent["seconds"].map(fmt_seconds),
                             share=spent["seconds"] / total if total else None)
        st.dataframe(shown[["what", "time", "trials", "share"]], hide_index=True, width="stretch",
                     placeholder=MISSING,
                     column_config={"trials": st.column_config.NumberColumn(format="%d"),
                                    "share": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                             max_value=1)})
    st.caption("Trial time is worker-seconds: with several workers it adds up to more than the wall clock. "
               "\"outside trials\" is the wall-clock time no trial or final step was running (reading and checking "
               "the data, start-up, waiting); it is shown for a run with a single search session.")


ui.page(body)
