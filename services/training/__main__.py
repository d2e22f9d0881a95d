"""``python -m services.training``: the training service under uvicorn, on the host and port of its settings
(the training command line is ``python -m services.training.cli``, or ``bt-train``)."""

from services.training.config import TrainingSettings
from shared.kit.service import service_main

if __name__ == "__main__":
    service_main("training", TrainingSettings, note="The training command line is bt-train (services.training.cli).")
