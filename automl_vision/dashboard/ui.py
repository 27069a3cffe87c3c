"""Streamlit plumbing shared by the pages: the selected run, caching, refresh, safe rendering."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import streamlit as st

from automl_vision.dashboard.data import Config, NotAvailable, RunData, config_from_env, redact, run_dir_problem, signature

log = logging.getLogger("automl_vision.dashboard")

RUN_KEY = "run_choice"
EXTRA_KEY = "extra_runs"
REFRESH_KEY = "auto_refresh"
# the address bar holds what a link should bring back: runs added in the sidebar (?add=PATH,
# repeated) and the run shown when it is not the first (?run=PATH); pages add their own
QP_ADD = "add"
QP_RUN = "run"
_SEEN = "_query_seen"  # the query values already applied, so a later change in the widgets wins


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


def add_run(text: str) -> str | None:
    """Add a run directory to the session's runs; returns why it was refused, or None."""
    path = str(Path(text.strip()).expanduser().resolve())
    problem = run_dir_problem(path)
    if problem:
        return problem
    extra = st.session_state.setdefault(EXTRA_KEY, [])
    if path not in extra and path not in config().runs:
        extra.append(path)
    return None


def query_value(name: str) -> str | None:
    """A query parameter not applied yet in this session (a link opened, the address edited), else None."""
    value = st.query_params.get(name)
    seen = st.session_state.setdefault(_SEEN, {})
    if value is None or seen.get(name) == value:
        return None
    seen[name] = value
    return value


def set_query(name: str, value: str | list[str] | None) -> None:
    """Show ``value`` in the address bar (None or empty: remove it), remembered as applied."""
    seen = st.session_state.setdefault(_SEEN, {})
    if value in (None, [], ""):
        if name in st.query_params:
            del st.query_params[name]
        seen.pop(name, None)
        return
    current = st.query_params.get_all(name) if isinstance(value, list) else st.query_params.get(name)
    if current != value:
        st.query_params[name] = value
    if isinstance(value, str):
        seen[name] = value


def _runs_from_url() -> list[str]:
    """Add the runs a link names (?add=PATH); returns the problems of those refused."""
    seen = st.session_state.setdefault(_SEEN, {})
    problems = []
    for path in st.query_params.get_all(QP_ADD):
        if path in seen.setdefault("add_paths", []):
            continue
        seen["add_paths"].append(path)
        problem = add_run(path)
        if problem:
            problems.append(problem)
    return problems


def sidebar() -> None:
    """Run selection, adding run directories to compare, and the refresh switch."""
    cfg = config()
    with st.sidebar:
        for problem in _runs_from_url():
            st.error(problem)
        choices = run_choices()
        wanted = query_value(QP_RUN)
        if wanted is not None:
            resolved = wanted if wanted.startswith("study:") else str(Path(wanted).expanduser().resolve())
            if resolved not in choices and not resolved.startswith("study:") and add_run(resolved) is None:
                choices = run_choices()
            if resolved in choices:
                st.session_state[RUN_KEY] = resolved
        if choices:
            choice = st.selectbox("Run", choices, key=RUN_KEY, format_func=_run_label,
                                  help="the run directory (or study) every page shows")
            set_query(QP_RUN, None if choice == choices[0] else choice)
        with st.form("add_run", clear_on_submit=True, border=False):
            new = st.text_input("Add a run directory", placeholder="/path/to/runs/other",
                                help="another run directory to show or compare; it is only read, and it stays "
                                     "in the page's address (a link or a reload brings it back)")
            if st.form_submit_button("Add") and new.strip():
                problem = add_run(new)
                if problem:
                    st.error(problem)
                else:
                    st.rerun()
        set_query(QP_ADD, list(st.session_state.get(EXTRA_KEY, [])))
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
