"""Registers a second model family called ``flaky``, which must never be used when the
user picks ``--prefer flaky=flaky_family``."""

from automl_vision import hookimpl
from automl_vision.types import ModelFamily


def _never(*args, **kwargs):
    raise AssertionError("flaky_twin's family was used although the user picked flaky_family")


@hookimpl
def register_model_families(register):
    register(ModelFamily(name="flaky", suggest=_never, build=_never))
