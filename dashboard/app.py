"""Entry point of the dashboard: ``streamlit run dashboard/app.py`` (``automl-vision dashboard`` does it).

The run directories, storage URL and study name come from the environment (see
:func:`dashboard.data.config_from_env`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Streamlit puts this file's folder on sys.path, not its parent: make ``import dashboard``
# find this copy, whether it runs from a checkout or from site-packages.
_here = Path(__file__).resolve().parent
_spec = importlib.util.find_spec("dashboard")
if _spec is None or not _spec.origin or Path(_spec.origin).resolve().parent != _here:
    sys.path.insert(0, str(_here.parent))
    for _name in [m for m in sys.modules if m == "dashboard" or m.startswith("dashboard.")]:
        del sys.modules[_name]

import streamlit as st  # noqa: E402

from dashboard import ui  # noqa: E402

# an emoji icon is drawn in the page; a ":material/..." one would be fetched from fonts.gstatic.com
st.set_page_config(page_title="automl-vision dashboard", page_icon="📊", layout="wide")

PAGES = [
    st.Page("sections/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview", default=True),
    st.Page("sections/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", url_path="leaderboard"),
    st.Page("sections/insight.py", title="Search insight", icon=":material/query_stats:", url_path="insight"),
    st.Page("sections/timeline.py", title="Timeline", icon=":material/timeline:", url_path="timeline"),
    st.Page("sections/ensemble.py", title="Ensemble", icon=":material/join_inner:", url_path="ensemble"),
    st.Page("sections/errors.py", title="Errors and explanations", icon=":material/image_search:", url_path="errors"),
    st.Page("sections/compare.py", title="Compare runs", icon=":material/compare_arrows:", url_path="compare"),
]

nav = st.navigation(PAGES)
ui.sidebar()
nav.run()
