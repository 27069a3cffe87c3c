"""Sub-commands of ``automl-vision``; see :mod:`automl_vision.cli`."""
