"""Search insight: optimisation history, parameter importances, parallel coordinates,
learning curves (pruned trials visible as such) and the Pareto front of multi-objective runs."""

from __future__ import annotations

import warnings

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import ui
from dashboard.data import RunData, signature


@st.cache_data(max_entries=8, show_spinner="computing parameter importances…")
def _importances(choice: str, sig: tuple, _run: RunData) -> go.Figure:
    # cached per run state: the evaluator is not re-run on every rerun of the page
    from optuna.visualization import plot_param_importances

    target = None
    if len(_run.directions) > 1:
        # with a custom target Optuna's evaluator assumes lower is better: flip a maximised objective
        sign = -1.0 if _run.directions[0] == "maximize" else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    with warnings.catch_warnings():
        # the evaluator warns that a custom target is minimised; the sign above already accounts for it
        warnings.filterwarnings("ignore", message=".*importances of params to achieve low `target`.*")
        return plot_param_importances(_run.study, target=target, target_name=_run.metric)


def history_figure(run: RunData) -> go.Figure:
    """Objective value per trial and the best so far, from the leaderboard (works without the study)."""
    df = run.leaderboard.copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df = df[df["value"].notna()].sort_values("number")
    fig = go.Figure()
    for state, colour in (("COMPLETE", "#1565c0"), ("PRUNED", "#f9a825")):
        part = df[df["state"] == state]
        fig.add_trace(go.Scatter(x=part["number"], y=part["value"], mode="markers", name=state.lower(),
                                 marker=dict(color=colour, size=9), text=part["model"],
                                 hovertemplate="trial %{x}<br>%{text}<br>%{y:.4f}<extra></extra>"))
    done = df[df["state"] == "COMPLETE"]
    if not done.empty:
        best = done["value"].cummax() if run.direction == "maximize" else done["value"].cummin()
        fig.add_trace(go.Scatter(x=done["number"], y=best, mode="lines+markers", name="best so far",
                                 line=dict(color="#c62828"), marker=dict(size=4),
                                 line_shape="hv"))
    if len(df) <= 20:
        fig.update_xaxes(dtick=1)  # whole trial numbers, not 0.5 steps
    fig.update_layout(xaxis_title="trial", yaxis_title=f"validation {run.metric}", height=420,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h"))
    return fig


def learning_curves(run: RunData, numbers: list[int], column: str) -> go.Figure:
    hist = run.histories(numbers)
    fig = go.Figure()
    if hist.empty or column not in hist:
        return fig
    palette = px.colors.qualitative.Plotly
    for i, (n, part) in enumerate(hist.groupby("trial", sort=True)):
        state = str(part["state"].iloc[0])
        pruned = state == "PRUNED"
        name = f"#{n} ({state.lower()})"
        fig.add_trace(go.Scatter(
            x=part["epoch"], y=part[column], name=name, mode="lines+markers",
            line=dict(color=palette[i % len(palette)], dash="dot" if pruned else "solid", width=1.5 if pruned else 2.5),
            marker=dict(symbol=["circle"] * (len(part) - 1) + (["x"] if pruned else ["circle"]),
                        size=[6] * (len(part) - 1) + ([13] if pruned else [6])),
        ))
    fig.update_xaxes(dtick=1 if hist["epoch"].max() <= 20 else None)
    fig.update_layout(xaxis_title="epoch", yaxis_title=column, height=420, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def body() -> None:
    run = ui.current_run()
    st.title("Search insight")
    lb = run.leaderboard
    n_complete = int((lb["state"] == "COMPLETE").sum()) if not lb.empty else 0
    if lb.empty:
        st.info("No trial yet: the charts fill in as trials finish.")
        return
    if run.study is None:
        st.info(f"The Optuna study cannot be read ({run.study_error}). The charts below come from the run directory "
                "alone; parameter importances and parallel coordinates need the study.")
    multi = len(run.directions) > 1
    tabs = st.tabs(["Optimisation history", "Parameter importances", "Parallel coordinates", "Learning curves",
                    "Pareto front"])
    with tabs[0]:
        st.plotly_chart(history_figure(run), width="stretch", key="history")
        st.caption("Each dot is a trial's final validation score (pruned trials at the epoch they were stopped); "
                   "the line is the best complete trial so far.")
    with tabs[1]:
        if run.study is None:
            st.info("Parameter importances need the Optuna study.")
        elif n_complete < 2:
            st.info(f"Parameter importances need at least 2 complete trials; this run has {n_complete} so far.")
        else:
            try:
                st.plotly_chart(_importances(str(run.path), signature(run.path), run), width="stretch", key="importances")
                st.caption("How much each hyperparameter matters for the objective over the complete trials, by "
                           "Optuna's default importance evaluator (PED-ANOVA in Optuna 5, fANOVA before); parameters "
                           "that exist only in some models, e.g. a CNN's width, are left out. Few trials give rough "
                           "estimates.")
            except Exception as exc:  # e.g. no parameter shared by every complete trial
                st.info(f"Parameter importances cannot be computed for this run yet: {exc}")
    with tabs[2]:
        if run.study is None:
            st.info("The parallel-coordinates view needs the Optuna study.")
        elif n_complete < 1:
            st.info("The parallel-coordinates view needs at least one complete trial.")
        else:
            from optuna.visualization import plot_parallel_coordinate

            complete = [t for t in run.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
            counts = pd.Series([p for t in complete for p in t.params]).value_counts()
            shared = [p for p, c in counts.items() if c == len(complete)]
            chosen = st.multiselect("Parameters", list(counts.index), default=shared[:8], key="pc_params",
                                    help="parameters sampled in every complete trial are chosen first")
            if chosen:
                target = (lambda t: t.values[0]) if multi else None
                fig = plot_parallel_coordinate(run.study, params=chosen, target=target, target_name=run.metric)
                fig.update_layout(height=480)
                st.plotly_chart(fig, width="stretch", key="parallel")
            else:
                st.info("Choose at least one parameter.")
    with tabs[3]:
        numbers = run.trial_numbers()
        ranked = [int(n) for n in lb["number"]]
        default = [n for n in ranked if n in numbers][:8]
        picked = st.multiselect("Trials", numbers, default=default, key="lc_trials",
                                format_func=lambda n: f"#{n} {lb.loc[lb['number'] == n, 'state'].iloc[0].lower()}")
        hist = run.histories(picked)
        cols = [c for c in hist.columns if c.startswith("val_") or c == "train_loss"]
        if not picked or not cols:
            st.info("No learning curve yet: pick trials that have finished at least one epoch.")
        else:
            metric_col = f"val_{run.metric}" if f"val_{run.metric}" in cols else cols[0]
            column = st.selectbox("Curve", cols, index=cols.index(metric_col), key="lc_metric")
            st.plotly_chart(learning_curves(run, picked, column), width="stretch", key="curves")
            st.caption("Solid: trials that ran their epochs. Dotted, ending in a cross: trials the pruner stopped.")
    with tabs[4]:
        if not multi:
            st.info(f"This run has one objective ({run.metric}); the Pareto front is shown for multi-objective runs "
                    "(e.g. `--metric accuracy,latency`).")
        elif run.study is None:
            st.info("The Pareto front needs the Optuna study.")
        elif n_complete < 1:
            st.info("The Pareto front needs at least one complete trial.")
        else:
            from optuna.visualization import plot_pareto_front

            st.plotly_chart(plot_pareto_front(run.study, target_names=run.objectives), width="stretch", key="pareto")


ui.page(body)
