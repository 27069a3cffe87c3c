"""A tracking plugin's learning curves: every epoch appended to the JSON-lines file $EPOCH_LOG."""

import json
import os

from automl_vision import hookimpl


@hookimpl
def on_epoch_end(run_dir, trial_number, epoch, epochs, record):
    with open(os.environ["EPOCH_LOG"], "a") as fh:
        fh.write(json.dumps({"trial": trial_number, "epoch": epoch, "epochs": epochs,
                             "val_accuracy": record["val_accuracy"], "loss": record["train_loss"]}) + "\n")
