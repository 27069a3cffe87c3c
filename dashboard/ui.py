"""Streamlit plumbing shared by the pages: the selected run, caching, refresh, safe rendering."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import streamlit as st

from dashboard.data import Config, NotAvailable, RunData, config_from_env, redact, signature

log = logging.getLogger("automl_vision.dashboard")

RUN_KEY = "run_choice"
EXTRA_KEY = "extra_runs"
REFRESH_KEY = "auto_refresh"


def config() -> Config:
    return config_from_env()


def run_choices() -> list[str]:
    """The runs the dashboard knows: from the command line, then those added in the sidebar."""
    cfg = config()
    choices = list(cfg.runs)
    if cfg.storage and not cfg.runs:
        choices.append(f"study:{cfg.study_name or ''}")
    for p in st.session_state.get(EXTRA_KEY, []):
        if p not in choices:
            choices.append(p)
    return choices


@st.cache_resource(max_entries=16, show_spinner=False)
def _load(path: str | None, storage: str | None, study_name: str | None, sig: tuple) -> RunData:
    # sig is only a cache key: a new fingerprint of the run directory means new data
    return RunData(path, storage=storage, study_name=study_name)


def load_run(choice: str) -> RunData:
    """The run for a sidebar choice, re-read only when its files changed."""
    cfg = config()
    if choice.startswith("study:"):
        # a database has no file to watch: re-read at the refresh interval
        bucket = int(time.time() // cfg.refresh_seconds)
        return _load(None, cfg.storage, cfg.study_name, (bucket,))
    # the storage URL given with a run directory holds that run's study
    storage = cfg.storage if cfg.runs and choice == cfg.runs[0] else None
    study = cfg.study_name if storage else None
    sig = signature(choice)
    if storage:
        sig = sig + (int(time.time() // cfg.refresh_seconds),)
    return _load(str(Path(choice).expanduser().resolve()), storage, study, sig)


def current_choice() -> str | None:
    choices = run_choices()
    if not choices:
        return None
    choice = st.session_state.get(RUN_KEY)
    return choice if choice in choices else choices[0]


def current_run(stop: bool = True) -> RunData | None:
    """The selected run; shows why there is nothing to show and stops the page when so."""
    choice = current_choice()
    if choice is None:
        st.info("No run selected. Start the dashboard with `automl-vision dashboard RUN_DIR`, or add a run "
                "directory in the sidebar.")
        if stop:
            st.stop()
        return None
    run = load_run(choice)
    problem = run.problem()
    if problem:
        st.warning(problem)
        if stop:
            st.stop()
        return None
    warn = run.layout_warning()
    if warn:
        st.caption(f"⚠️ {warn}")
    return run


def sidebar() -> None:
    """Run selection, adding run directories to compare, and the refresh switch."""
    cfg = config()
    with st.sidebar:
        choices = run_choices()
        if choices:
            st.selectbox("Run", choices, key=RUN_KEY, format_func=_run_label,
                         help="the run directory (or study) every page shows")
        with st.form("add_run", clear_on_submit=True, border=False):
            new = st.text_input("Add a run directory", placeholder="/path/to/runs/other",
                                help="another run directory to show or compare; it is only read")
            if st.form_submit_button("Add") and new.strip():
                path = str(Path(new.strip()).expanduser().resolve())
                if not Path(path).is_dir():
                    st.error(f"{path} is not a directory")
                else:
                    extra = st.session_state.setdefault(EXTRA_KEY, [])
                    if path not in extra and path not in cfg.runs:
                        extra.append(path)
                    st.rerun()
        st.toggle("Auto-refresh", key=REFRESH_KEY, value=_default_refresh(),
                  help=f"re-read the run every {cfg.refresh_seconds:g} s while a search is running")


def _run_label(choice: str) -> str:
    if choice.startswith("study:"):
        return f"study {choice[6:] or ''} in {redact(config().storage)}"
    return Path(choice).name or choice


def _default_refresh() -> bool:
    if REFRESH_KEY in st.session_state:
        return bool(st.session_state[REFRESH_KEY])
    choice = current_choice()
    if choice is None:
        return False
    try:
        return load_run(choice).is_running()
    except Exception:  # the page itself reports a broken run; the switch just stays off
        return False


def page(body: Callable[[], None], live: bool = True) -> None:
    """Render a page body safely, re-running it on a timer while auto-refresh is on.

    Any error that escapes a section is shown as a message, never as a traceback in
    the browser; the traceback goes to the server's log for a bug report.
    """

    def safe() -> None:
        try:
            body()
        except NotAvailable as exc:
            st.info(str(exc))
        except Exception as exc:  # the safety net (st.stop and st.rerun are BaseExceptions and pass through)
            log.exception("dashboard section failed")
            st.error(f"This section could not be shown: {type(exc).__name__}: {exc}. The run directory may be "
                     "from another automl-vision version or a file in it may be damaged; the server log has details.")

    interval = config().refresh_seconds if (live and st.session_state.get(REFRESH_KEY)) else None
    if interval:
        st.fragment(safe, run_every=interval)()
    else:
        safe()
