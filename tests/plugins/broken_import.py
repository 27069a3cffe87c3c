"""A plugin whose import fails (a dependency that is not installed)."""

import automl_vision_no_such_dependency  # noqa: F401
