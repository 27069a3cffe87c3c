"""Search insight: optimisation history, parameter importances, parallel coordinates,
learning curves (pruned trials visible as such) and the Pareto front of multi-objective runs."""

from __future__ import annotations

import warnings

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from automl_vision.dashboard import ui
from automl_vision.dashboard.data import RunData, signature, state_label, varying_params


SLICE_BELOW = 5  # complete trials under which importances mean little: slice plots instead


@st.cache_data(max_entries=8, show_spinner="computing parameter importances…")
def _importances(choice: str, sig: tuple, _run: RunData, params: tuple[str, ...]) -> tuple[go.Figure, list[str]]:
    """Optuna's importance chart over ``params``, with the warnings its evaluator gave.

    Cached per run state: the evaluator is not re-run on every rerun of the page.
    """
    from optuna.visualization import plot_param_importances

    target = None
    if len(_run.directions) > 1:
        # with a custom target Optuna's evaluator assumes lower is better: flip a maximised objective
        sign = -1.0 if _run.directions[0] == "maximize" else 1.0
        target = lambda t: sign * t.values[0]  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the evaluator warns that a custom target is minimised; the sign above already accounts for it
        warnings.filterwarnings("ignore", message=".*importances of params to achieve low `target`.*")
        fig = plot_param_importances(_run.study, params=list(params), target=target,
                                     target_name=f"validation {_run.metric}")
    # a row for every parameter, so that no label is skipped for lack of room
    fig.update_layout(height=110 + 26 * len(params), margin=dict(l=10, r=30, t=50, b=40))
    fig.update_yaxes(automargin=True, dtick=1)
    return fig, sorted({str(w.message) for w in caught})


def _slices(run: RunData, params: list[str]) -> go.Figure:
    from optuna.visualization import plot_slice

    fig = plot_slice(run.study, params=params, target=(lambda t: t.values[0]) if len(run.directions) > 1 else None,
                     target_name=f"validation {run.metric}")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=60, b=10))
    return fig


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
        name = f"#{n} ({state_label(state)})"
        dot = 0 if len(part) > 60 else 6  # long curves as lines: markers would smear
        fig.add_trace(go.Scatter(
            x=part["epoch"], y=part[column], name=name, mode="lines+markers",
            line=dict(color=palette[i % len(palette)], dash="dot" if pruned else "solid", width=1.5 if pruned else 2.5),
            marker=dict(symbol=["circle"] * (len(part) - 1) + (["x"] if pruned else ["circle"]),
                        size=[dot] * (len(part) - 1) + ([13] if pruned else [dot])),
        ))
    if hist["epoch"].max() <= 20:
        fig.update_xaxes(dtick=1)
    else:
        fig.update_xaxes(tickformat="d", nticks=12)
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
        importances(run, n_complete)
    with tabs[2]:
        parallel(run, n_complete, multi)
    with tabs[3]:
        numbers = run.trial_numbers()
        ranked = [int(n) for n in lb["number"]]
        default = [n for n in ranked if n in numbers][:8]
        picked = st.multiselect("Trials", numbers, default=default, key="lc_trials",
                                format_func=lambda n: f"#{n} {state_label(lb.loc[lb['number'] == n, 'state'].iloc[0])}")
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


def importances(run: RunData, n_complete: int) -> None:
    if run.study is None:
        st.info("Parameter importances need the Optuna study.")
        return
    if n_complete < 2:
        st.info(f"Parameter importances need at least 2 complete trials; this run has {n_complete} so far.")
        return
    counts = varying_params(run.study)
    varying = sorted(p for p, n in counts.items() if n > 1)
    constant = sorted(p for p, n in counts.items() if n <= 1)
    left_out = (f" Left out: parameters that take a single value in every complete trial ({', '.join(constant)})."
                if constant else "")
    if not varying:
        st.info("No parameter takes more than one value over the complete trials: there is nothing to rank." + left_out)
        return
    if n_complete < SLICE_BELOW:
        st.warning(f"With only {n_complete} complete trials, importances would be noise: here is each parameter's "
                   f"value against the objective instead (Optuna's slice plot). Importances appear from "
                   f"{SLICE_BELOW} complete trials.")
        st.plotly_chart(_slices(run, varying[:8]), width="stretch", key="importances")
        st.caption("Each dot is a complete trial." + left_out)
        return
    try:
        fig, said = _importances(str(run.path), signature(run.path), run, tuple(varying))
    except Exception as exc:  # e.g. an evaluator that cannot handle these parameters
        st.info(f"Parameter importances cannot be computed for this run yet: {exc}")
        return
    st.plotly_chart(fig, width="stretch", key="importances")
    st.caption(f"How much each parameter matters for validation {run.metric} over the {n_complete} complete trials, "
               "by Optuna's default importance evaluator (PED-ANOVA in Optuna 5). Only parameters that take at least "
               "two values are ranked; per-model parameters (e.g. `cnn.width`) are ranked over the trials that have "
               "them." + left_out + " Few trials give rough estimates.")
    for message in said:
        st.caption(f"⚠️ Optuna: {message}")


def parallel(run: RunData, n_complete: int, multi: bool) -> None:
    if run.study is None:
        st.info("The parallel-coordinates view needs the Optuna study.")
        return
    if n_complete < 1:
        st.info("The parallel-coordinates view needs at least one complete trial.")
        return
    from optuna.visualization import plot_parallel_coordinate

    complete = [t for t in run.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    counts = pd.Series([p for t in complete for p in t.params]).value_counts()
    distinct = varying_params(run.study)
    shared = [p for p, c in counts.items() if c == len(complete) and distinct.get(p, 0) > 1]
    chosen = st.multiselect("Parameters", list(counts.index), default=shared[:8], key="pc_params",
                            help="chosen first: parameters sampled in every complete trial that take more than one "
                                 "value (one that never changes draws a flat line)")
    if not chosen:
        st.info("Choose at least one parameter.")
        return
    target = (lambda t: t.values[0]) if multi else None
    fig = plot_parallel_coordinate(run.study, params=chosen, target=target,
                                   target_name=f"validation {run.metric} (objective)")
    # the axis names level and short enough to sit side by side (Optuna's are turned when crowded), the
    # objective's on two lines; room for the outer axes' values, which Optuna draws as annotations
    names = list(fig.layout.xaxis.ticktext or [])
    if names:
        names[0] = f"validation {run.metric}<br>(objective)"
    fig.update_xaxes(ticktext=names, tickangle=0, automargin=True)
    fig.update_layout(height=500, margin=dict(l=90, r=90, t=60, b=60), title=None)
    st.plotly_chart(fig, width="stretch", key="parallel")
    st.caption(f"One line a complete trial, coloured by validation {run.metric}; the first axis is the objective.")


ui.page(body)
