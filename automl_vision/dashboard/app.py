"""Entry point of the dashboard: ``streamlit run automl_vision/dashboard/app.py`` (``automl-vision dashboard``
does it).

The run directories, storage URL and study name come from the environment (see
:func:`automl_vision.dashboard.data.config_from_env`).
"""

from __future__ import annotations

import streamlit as st

from automl_vision.dashboard import ui

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
