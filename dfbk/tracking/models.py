"""Load a model logged by the MLflow import: ``runs:/<run id>/model`` or ``models:/<name>/<v>``.

Each seed run holds its evaluated checkpoint as artifact ``model/model.pt``: a dfbk checkpoint
that carries its recipe (method, preset, hparams, data contract), so nothing else is needed to
rebuild the network (:func:`dfbk.training.checkpoint.rebuild_method`). The file is loaded with
``torch.load(weights_only=True)`` and its content hash checked, as ``dfbk translate`` does; the
downloaded ``model.pt`` can equally be passed to ``dfbk translate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfbk.errors import DataError

CHECKPOINT_NAME = "model.pt"


def _registry_source(model_uri: str, tracking_uri: str | None) -> str:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> the version's artifact URI.

    Resolved here with the registry on the tracking store: MLflow would otherwise look the
    name up in its default registry (``$MLFLOW_REGISTRY_URI``, else a local ``mlflow.db``).
    """
    if not model_uri.startswith("models:/"):
        return model_uri
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    reference = model_uri.removeprefix("models:/").strip("/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    elif "/" in reference:
        name, version = reference.rsplit("/", 1)
    else:
        raise DataError(f"{model_uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    return client.get_model_version_download_uri(name, version)


def download_logged_model(model_uri: str, dest: Path, tracking_uri: str | None = None) -> Path:
    """Download the model artifact to ``dest``; return the path of its ``model.pt``."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        artifact_uri = _registry_source(model_uri, tracking_uri)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=str(dest), tracking_uri=tracking_uri
            )
        )
    except (MlflowException, OSError) as error:
        first = " ".join(str(error).split())[:300]
        raise DataError(f"{model_uri}: cannot download the logged model ({first})") from None
    checkpoint = local / CHECKPOINT_NAME if local.is_dir() else local
    if not checkpoint.is_file():
        raise DataError(f"{model_uri}: no {CHECKPOINT_NAME} in the artifact (not a dfbk model)")
    return checkpoint


def load_logged_model(
    model_uri: str, dest: Path, tracking_uri: str | None = None
) -> tuple[Any, dict[str, Any]]:
    """The method (eval mode, CPU) and checkpoint payload of a logged model.

    ``dest`` is where the checkpoint is downloaded (kept, so it can be passed to
    ``dfbk translate``). Translate with ``method.translate(source)``: source (N, 1, H, W) in
    [0, 1] on the grid the payload's data contract states.
    """
    from dfbk.training.checkpoint import load_checkpoint, rebuild_method

    checkpoint = download_logged_model(model_uri, Path(dest), tracking_uri)
    payload = load_checkpoint(checkpoint)
    return rebuild_method(payload, checkpoint), payload
