"""Overview: the dataset, the budget used, the best so far and the trials by state."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import plotly.express as px
import streamlit as st

from automl_vision import leaderboard as lb
from automl_vision.dashboard import ui
from automl_vision.dashboard.data import MISSING, STATE_COLOURS, fmt_seconds, state_label


def body() -> None:
    run = ui.current_run()
    running = run.is_running()
    st.title(f"Run {run.label}")
    where = str(run.path) if run.path else ""
    status = ":blue-badge[:material/autorenew: running]" if running else ":green-badge[:material/check: finished]"
    st.markdown(f"{status} &nbsp; `{where}`" + (f" &nbsp; study **{run.study.study_name}**" if run.study else ""))

    best = run.best()
    budget = run.budget()
    states = run.trials_by_state()
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(f"Best validation {run.metric}", f"{best['value']:.4f}" if best else MISSING,
              help="the best complete trial's own network on the validation split, without TTA or calibration "
                   "(the Ensemble page's validation figures are the delivered models', with TTA where kept)")
    c1.caption(f"trial #{best['number']} · {best['model']} · raw, no TTA" if best else "no complete trial yet")
    c2.metric("Trials", sum(states.values()))
    c2.caption(" · ".join(f"{n} {state_label(s)}" for s, n in states.items()) or "none started yet")
    # the value stays short so that it is never cut; the budget goes in the caption
    c3.metric("Time used", fmt_seconds(budget["elapsed"]))
    if budget["time_fraction"] is not None:
        c3.progress(budget["time_fraction"])
    if budget["time_budget"]:
        c3.caption(f"of a {fmt_seconds(budget['time_budget'])} time budget")
    trials_text = f"{budget['finished_trials']}" + (f" of {budget['n_trials']}" if budget["n_trials"] else "")
    c4.metric("Trials finished (budget)", trials_text)
    if budget["trial_fraction"] is not None:
        c4.progress(budget["trial_fraction"])
    if budget["started"]:
        started = dt.datetime.fromtimestamp(budget["started"]).strftime("%Y-%m-%d %H:%M:%S")
        finished = (dt.datetime.fromtimestamp(budget["finished"]).strftime("%Y-%m-%d %H:%M:%S")
                    if budget["finished"] and not running else "still running")
        st.caption(f"started {started} · finished {finished} · {budget['sessions']} session(s)")

    if run.final and not run.final.get("error"):
        f = run.final
        what = ("the ensemble" if f.get("deliverable") == "ensemble" else
                f"the best single model, trial #{f.get('best_trial')} ({f.get('best_model')})")
        st.success(f"Deliverable: **{what}** — {f.get('why', '')}.")
    elif run.final and run.final.get("error"):
        st.warning(run.final["error"])
    elif not states.get("COMPLETE"):
        st.info("No trial has finished yet: the leaderboard fills in as trials complete"
                + (" (this page refreshes on its own)." if running else "."))
    if run.study_error:
        st.caption(f"Study: {run.study_error}")
    slow = lb.slowdowns(run.leaderboard)
    if slow:
        st.warning("**The machine got slower than measured** — scores are below what it gives when quiet:\n\n"
                   + "\n".join(f"- {line}" for line in slow))

    left, right = st.columns([3, 2])
    with left:
        st.subheader("Dataset")
        classes = run.classes
        report = run.data_report
        if not report and not run.run.get("data"):
            st.info("No data report yet (data_report.json): the search is still reading and checking the images.")
        else:
            st.markdown(
                f"**{len(classes)} classes** · {report.get('num_images', '?')} usable images · "
                f"**{report.get('num_skipped', run.run.get('data', {}).get('skipped', 0))} skipped** · "
                f"{report.get('in_chans', '?')} channel(s) · split: {report.get('split_source', '?')} · "
                f"source `{report.get('root', run.run.get('data', {}).get('root', '?'))}`")
            counts = run.split_counts()
            st.dataframe(counts, width="stretch", height=min(460, 40 + 35 * len(counts)))
            per_class = counts.drop(index="total", errors="ignore")
            if len(per_class) > 1:
                long = per_class.reset_index(names="class").melt(id_vars="class", var_name="split", value_name="images")
                fig = px.bar(long, x="class", y="images", color="split", barmode="stack", height=280)
                fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), xaxis_type="category")
                st.plotly_chart(fig, width="stretch")
            for w in report.get("warnings", []):
                st.warning(w)
            skipped = run.skipped()
            with st.expander(f"Skipped files ({len(skipped)})", expanded=bool(len(skipped)) and len(skipped) <= 20):
                if skipped.empty:
                    st.write("Every file was usable.")
                else:
                    st.dataframe(skipped, width="stretch", hide_index=True)
            dups = report.get("duplicates") or []
            if dups:
                with st.expander(f"Duplicate images ({len(dups)} groups)"):
                    st.dataframe(pd.DataFrame(dups), width="stretch", hide_index=True)
    with right:
        st.subheader("Trials by state")
        if states:
            df = pd.DataFrame({"state": [state_label(s) for s in states], "trials": list(states.values())})
            fig = px.bar(df, x="trials", y="state", orientation="h", color="state", color_discrete_map=STATE_COLOURS,
                         height=60 + 40 * len(df), text="trials")
            fig.update_layout(showlegend=False, margin=dict(l=10, r=10, t=10, b=10))
            st.plotly_chart(fig, width="stretch", key="states", config={"displayModeBar": False})
        else:
            st.write("No trial yet.")
        settings = run.run.get("settings") or {}
        if settings:
            st.subheader("Search settings")
            shown = {k: settings.get(k) for k in ("preset", "models", "metric", "pruner", "image_sizes", "max_epochs",
                                                    "time_budget", "n_trials", "seed", "device", "storage")}
            # what the search resolved where the command left it to the defaults
            shown["models"] = ", ".join(map(str, settings.get("models") or [])) or "default zoo (no --models)"
            if settings.get("max_epochs") is None and run.run.get("max_epochs") is not None:
                shown["max_epochs"] = f"{run.run['max_epochs']} (the search's choice)"
            if settings.get("time_budget"):
                shown["time_budget"] = f"{fmt_seconds(settings['time_budget'])} ({settings['time_budget']:g} s)"
            shown["execution"] = (run.run.get("exec_path") or {}).get("reason", "")
            st.dataframe(pd.DataFrame({"value": {k: MISSING if v in (None, "", []) else str(v)
                                                 for k, v in shown.items()}}), width="stretch")
            with st.expander("Command and versions"):
                st.code(" ".join(map(str, run.run.get("command") or [])), language="bash")
                st.json(run.run.get("versions") or {}, expanded=False)


ui.page(body)
