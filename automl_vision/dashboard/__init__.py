"""The automl-vision dashboard: a Streamlit app over a run directory and its Optuna study.

Start it with ``automl-vision dashboard RUN_DIR``. :mod:`automl_vision.dashboard.data` is its only
access to the data (read-only); :mod:`automl_vision.dashboard.ui` holds the Streamlit plumbing; the
pages are in ``automl_vision/dashboard/sections/`` (not ``pages/``, which Streamlit would treat as
its older automatic multipage folder and run without ``app.py``).
"""

from pathlib import Path

APP = Path(__file__).with_name("app.py")

__all__ = ["APP"]
