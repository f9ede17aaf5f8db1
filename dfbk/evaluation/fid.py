"""FID (pytorch-fid) between a run's translated test slices and the real target slices.

pytorch-fid's InceptionV3 loads its weights only through `torch.hub`'s download cache, i.e.
`$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth` (no other way to point it
at a file), and nothing may be downloaded at run time here. So FID is computed exactly when
that file is present; otherwise metrics.json and the table caption say why the column is
absent. Features are the 2048-d pool3 activations of 3-channel copies of each [0, 1] slice
(resized to 299 by pytorch-fid); their mean and covariance are accumulated as running sums,
so memory does not grow with the test set. FID = ||mu_r - mu_f||^2 +
Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) (Heusel et al. 2017), pytorch-fid's formula; the trace of
the matrix square root is taken from the eigenvalues of the symmetric S_r^(1/2) S_f S_r^(1/2)
(same eigenvalues as S_r S_f), which takes seconds where pytorch-fid's general `sqrtm` of a
2048 x 2048 matrix takes minutes on a few cores. tests/test_protocols.py checks the two agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dfbk.data.sources.weights import torch_hub_dir

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048


def fid_weights_path() -> Path:
    return torch_hub_dir() / "checkpoints" / FID_WEIGHTS_NAME


def fid_unavailable_reason() -> str | None:
    """None when FID can be computed here; else why not (for metrics.json and captions)."""
    path = fid_weights_path()
    if not path.exists():
        return (
            f"pytorch-fid Inception weights not found at {path} "
            "(run `dfbk weights inception`, or put pt_inception-2015-12-05-6726825d.pth in "
            "$TORCH_HOME/hub/checkpoints/)"
        )
    try:
        import pytorch_fid  # noqa: F401
    except ImportError:
        return "pytorch-fid is not installed"
    return None


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) for Gaussian feature fits.

    S1 S2 has the eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), so the trace
    of its square root is the sum of their square roots (rounding negatives to 0).
    """
    values, vectors = np.linalg.eigh(sigma1)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = root @ sigma2 @ root
    eigen = np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eigen).sum())


class FidAccumulator:
    """Running Inception-feature statistics of real and translated slices of one run."""

    def __init__(self, batch_size: int = 32, device: str | None = None) -> None:
        import torch
        from pytorch_fid.inception import InceptionV3

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        index = InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
        self.model = InceptionV3([index]).to(self.device).eval()
        self.batch_size = batch_size
        self.stats = {k: [0, np.zeros(FEATURE_DIM), np.zeros((FEATURE_DIM,) * 2)] for k in "rf"}

    def _features(self, slices: np.ndarray) -> np.ndarray:
        """(N, H, W) in [0, 1] -> (N, 2048) float64 pool3 features."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(slices), self.batch_size):
                batch = torch.as_tensor(np.asarray(slices[i : i + self.batch_size]))
                batch = batch.float().clamp(0, 1)[:, None].expand(-1, 3, -1, -1).to(self.device)
                out.append(self.model(batch)[0].squeeze(-1).squeeze(-1).double().cpu().numpy())
        return np.concatenate(out)

    def _update(self, key: str, slices: np.ndarray) -> None:
        feats = self._features(slices)
        stat = self.stats[key]
        stat[0] += len(feats)
        stat[1] += feats.sum(axis=0)
        stat[2] += feats.T @ feats

    def add(self, real: np.ndarray, fake: np.ndarray) -> None:
        """Add one subject's reference and translated slices, (S, H, W) in [0, 1]."""
        self._update("r", real)
        self._update("f", fake)

    def _moments(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        n, total, outer = self.stats[key]
        mu = total / n
        return mu, (outer - n * np.outer(mu, mu)) / (n - 1)

    def result(self) -> dict:
        """{"value": FID, "n_real", "n_fake", "weights"}; value None with fewer than 2 slices."""
        n_real, n_fake = self.stats["r"][0], self.stats["f"][0]
        info = {"n_real": n_real, "n_fake": n_fake, "weights": FID_WEIGHTS_NAME}
        if min(n_real, n_fake) < 2:
            return {"value": None, "reason": "fewer than 2 test slices", **info}
        mu_r, sigma_r = self._moments("r")
        mu_f, sigma_f = self._moments("f")
        value = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
        return {"value": value, **info}


def fid_columns(metrics_files: list[Path]) -> tuple[pd.DataFrame | None, str]:
    """FID per dataset × direction × method (mean over seeds) and a caption sentence.

    Returns (None, why) when no run has an FID, so the table leaves the column out and the
    caption says why; otherwise a frame with columns dataset, direction, method, "FID".
    """
    rows, reasons = [], {}
    for path in map(Path, metrics_files):
        info = json.loads(path.read_text())
        fid = info.get("fid") or {}
        if fid.get("value") is None:
            reasons[fid.get("reason") or "not computed"] = None
            continue
        rows.append({k: info[k] for k in ("dataset", "direction", "method", "seed")})
        rows[-1]["FID"] = float(fid["value"])
    if not rows:
        return None, "FID not reported: " + "; ".join(reasons or {"no runs": None}) + "."
    frame = pd.DataFrame(rows).groupby(["dataset", "direction", "method"], sort=False)["FID"]
    note = (
        "FID: pytorch-fid (Inception pool3, 2048-d) between translated and real test slices of "
        "each run, mean over seeds; lower is better."
    )
    if reasons:
        note += " Runs without FID: " + "; ".join(reasons) + "."
    return frame.mean().reset_index(), note
