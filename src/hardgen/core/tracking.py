"""Experiment trackers (``train.report_to`` and the stage keys that inherit it) through accelerate's tracker API.

``tensorboard`` (the default) writes event files into a ``tensorboard`` folder inside the run's own results folder,
offline (``tensorboard --logdir results`` opens every run); ``wandb`` and ``mlflow`` log to the project ``hardgen``
(W&B project / MLflow experiment) under the run's name, where the package is installed and configured (an account or
a tracking URI of the user's); ``none`` logs nothing. The LoRA trainer hands these to
``Accelerator(log_with=...).init_trackers`` (:func:`tracker_init`); the segmenter loop, which has no Accelerator,
builds accelerate's tracker class directly (:func:`open_tracker`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

#: ``report_to`` values: none, or an accelerate tracker name
TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
#: the folder of a run's TensorBoard event files, inside the run's results folder
TENSORBOARD_DIR = "tensorboard"
#: the W&B project / MLflow experiment every hardgen run logs to
PROJECT = "hardgen"
#: the package each tracker needs (torch.utils.tensorboard writes with the tensorboard package)
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_tracker(name: str, key: str) -> None:
    """Raise ValueError naming ``key`` when ``name`` is no tracker or its package is not installed."""
    if name not in TRACKERS:
        raise ValueError(f"{key}: unknown tracker {name!r} (choose from {', '.join(TRACKERS)})")
    package = _PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ValueError(f"{key}: {name} is not installed in this environment; install it (pip install {package}) "
                         "and configure it, or choose tensorboard (pinned) or none")


def tracker_init(name: str, run_name: str, out_dir: str | Path, first_step: int = 0) -> tuple[str, dict[str, Any]]:
    """``(project_name, init_kwargs)`` for ``Accelerator.init_trackers`` of a run writing under ``out_dir``, whose
    ``logging_dir`` is ``out_dir``: tensorboard's project name is its folder (``out_dir/tensorboard``); wandb and
    mlflow log to :data:`PROJECT` as ``run_name``. ``first_step`` > 0 (a resumed run): TensorBoard hides what an
    interrupted process logged from that step on (``purge_step``), so the curve continues instead of doubling."""
    if name == "tensorboard":
        return TENSORBOARD_DIR, {"tensorboard": {"purge_step": first_step} if first_step > 0 else {}}
    if name == "wandb":
        return PROJECT, {"wandb": {"name": run_name, "dir": str(out_dir)}}
    if name == "mlflow":
        return PROJECT, {"mlflow": {"run_name": run_name}}
    raise ValueError(f"tracker_init: no tracker for {name!r}")


def open_tracker(name: str, run_name: str, out_dir: str | Path, config: dict[str, Any] | None = None,
                 key: str = "report_to") -> Any:
    """A started accelerate tracker (``accelerate.tracking``) for a loop without an Accelerator, or None for ``none``;
    ``config`` goes to wandb / mlflow as the run's parameters; ``key`` names the setting in errors."""
    check_tracker(name, key)
    if name == "none":
        return None
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    project, init_kwargs = tracker_init(name, run_name, out_dir)
    kwargs = init_kwargs[name]
    if name == "tensorboard":
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tracker = TensorBoardTracker(project, str(out_dir), **kwargs)
    elif name == "wandb":
        tracker = WandBTracker(project, **kwargs)
    else:
        tracker = MLflowTracker(project, **kwargs)
    tracker.start()
    if config and name != "tensorboard":  # TensorBoard's hparams would add a timestamped run folder per run
        tracker.store_init_configuration(config)
    return tracker


def log_image(tracker: Any, tag: str, image: Any, step: int, path: str | Path) -> None:
    """One RGB uint8 (H, W, 3) image at ``step``: TensorBoard and W&B take it as an image, MLflow the file at
    ``path`` as an artifact."""
    import numpy as np

    if tracker.name == "tensorboard":
        tracker.log_images({tag: np.asarray(image)[None]}, step=step, dataformats="NHWC")
        tracker.tracker.flush()
    elif tracker.name == "wandb":
        tracker.log_images({tag: [np.asarray(image)]}, step=step)
    elif tracker.name == "mlflow":
        tracker.log_artifact(str(path), artifact_path=tag)
    else:
        raise ValueError(f"log_image: no image logging for tracker {tracker.name!r}")
