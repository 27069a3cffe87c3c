"""``python -m automl_vision``: the ``automl-vision`` command, for environments without its script."""

import sys

from automl_vision.cli import main

if __name__ == "__main__":
    sys.exit(main())
