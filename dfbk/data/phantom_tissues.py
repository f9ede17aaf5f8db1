"""Image formation of the head phantom: tissue properties, sequences, signal equations, noise.

Kept apart from the anatomy (`dfbk.data.phantom`) so the physics can be read, cited and checked on
its own: tissue-fraction maps go in, MR and CT volumes come out. Relaxation times are for 3 T, in
milliseconds; proton density (PD) is relative to pure water; the apparent diffusion coefficient
(ADC) is in 1e-3 mm^2/s; CT numbers are in Hounsfield units (HU). Sources: Stanisz et al., MRM
54:507 (2005) and Wansapura et al., JMRI 9:531 (1999) for brain and muscle T1/T2; Lu et al., JMRI
22:13 (2005) for CSF T1; Gold et al., AJR 183:343 (2004) for subcutaneous fat; Du & Bydder, NMR
Biomed 26:489 (2013) for cortical bone (T2* < 1 ms, so bone is dark on every conventional
sequence); Sener, Comput Med Imaging Graph 25:299 (2001) for ADCs of brain, CSF, tumour and acute
infarct; Rohrer et al., Invest Radiol 40:715 (2005) for the gadolinium relaxivity r1 at 3 T.
Lesion values are typical of glioblastoma (necrotic core, vasogenic oedema, enhancing rim) and of
an acute (< 24 h) ischaemic stroke.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MR_FULL_SCALE = 1000.0  # arbitrary units: the brightest tissue lands at 750-950
SUBJECT_JITTER = 0.03  # subject-level relative SD of T1, T2, PD, ADC


@dataclass(frozen=True)
class Tissue:
    """Population-mean properties of one tissue at 3 T (units in the module docstring)."""

    t1_ms: float
    t2_ms: float
    pd: float
    adc: float  # 1e-3 mm^2/s
    hu: float  # Hounsfield units; bone's value is replaced by a smooth 700-1500 HU field
    gd_mm: float = 0.0  # gadolinium concentration after injection (mmol/l), for `t1c`


# Order matters: it is the first axis of the tissue-fraction stack in `dfbk.data.phantom`.
TISSUES: dict[str, Tissue] = {
    "csf": Tissue(t1_ms=4300.0, t2_ms=2000.0, pd=1.00, adc=3.00, hu=8.0),
    "gm": Tissue(t1_ms=1600.0, t2_ms=95.0, pd=0.82, adc=0.85, hu=40.0, gd_mm=0.03),
    "wm": Tissue(t1_ms=1000.0, t2_ms=70.0, pd=0.70, adc=0.75, hu=26.0, gd_mm=0.015),
    "bone": Tissue(t1_ms=250.0, t2_ms=0.8, pd=0.15, adc=0.30, hu=1100.0),
    "fat": Tissue(t1_ms=380.0, t2_ms=130.0, pd=0.90, adc=0.02, hu=-100.0),
    "skin": Tissue(t1_ms=1400.0, t2_ms=45.0, pd=0.75, adc=1.50, hu=45.0, gd_mm=0.10),
    "necrosis": Tissue(t1_ms=3000.0, t2_ms=400.0, pd=0.95, adc=2.00, hu=15.0),
    "oedema": Tissue(t1_ms=1500.0, t2_ms=180.0, pd=0.88, adc=1.50, hu=18.0),
    "enhancing": Tissue(t1_ms=1600.0, t2_ms=120.0, pd=0.85, adc=1.00, hu=38.0, gd_mm=0.40),
    "stroke": Tissue(t1_ms=1300.0, t2_ms=110.0, pd=0.82, adc=0.40, hu=20.0),
    "air": Tissue(t1_ms=1000.0, t2_ms=1.0, pd=0.0, adc=0.0, hu=-1000.0),  # no MR signal
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)
# Lesion tissue -> BraTS-style label value (dfbk.data.phantom.LABELS).
LESION_LABELS: dict[str, int] = {"necrosis": 1, "oedema": 2, "enhancing": 3, "stroke": 4}

BONE_HU_RANGE: tuple[float, float] = (700.0, 1500.0)  # diploe to cortical table
GD_R1_PER_MM_S: float = 4.0  # longitudinal relaxivity r1 of gadolinium chelates at 3 T, 1/(mM s)
DWI_B_S_PER_MM2: float = 1000.0
DWI_FAT_SUPPRESSION: float = 0.05  # EPI DWI is fat-saturated: fat keeps ~5% of its signal


@dataclass(frozen=True)
class Sequence:
    """Acquisition parameters of one MR contrast (times in ms)."""

    tr_ms: float
    te_ms: float
    ti_ms: float | None = None  # inversion recovery when set
    contrast_agent: bool = False
    b_value: float = 0.0  # s/mm^2; diffusion weighting when > 0


def flair_null_ti(t1_ms: float, tr_ms: float) -> float:
    """Inversion time that nulls a tissue of T1 `t1_ms`: 1 - 2 e^(-TI/T1) + e^(-TR/T1) = 0.

    For TR >> T1 this is the familiar TI = T1 ln 2; the exact form keeps CSF nulled at TR = 9 s.
    """
    return float(t1_ms * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1_ms))))


_FLAIR_TR_MS = 9000.0
# Clinical 3 T protocols: T1 spin echo, dual-echo PD/T2 fast spin echo, FLAIR nulling the CSF of
# the population table (a scanner does not know the subject's T1), fat-saturated EPI DWI.
SEQUENCES: dict[str, Sequence] = {
    "t1n": Sequence(tr_ms=500.0, te_ms=10.0),
    "t1c": Sequence(tr_ms=500.0, te_ms=10.0, contrast_agent=True),
    "t2w": Sequence(tr_ms=4000.0, te_ms=100.0),
    "t2f": Sequence(
        tr_ms=_FLAIR_TR_MS,
        te_ms=120.0,
        ti_ms=flair_null_ti(TISSUES["csf"].t1_ms, _FLAIR_TR_MS),
    ),
    "pd": Sequence(tr_ms=4000.0, te_ms=15.0),
    "dwi": Sequence(tr_ms=5000.0, te_ms=80.0, b_value=DWI_B_S_PER_MM2),
}


def tissue_table() -> np.ndarray:
    """Population properties as a (tissue, 6) float64 array: T1, T2, PD, ADC, HU, Gd."""
    return np.array(
        [[t.t1_ms, t.t2_ms, t.pd, t.adc, t.hu, t.gd_mm] for t in TISSUES.values()],
        dtype=np.float64,
    )


def mr_signal(properties: np.ndarray, sequence: Sequence) -> np.ndarray:
    """Noise-free magnitude signal of each tissue (rows of `tissue_table()` layout) for `sequence`.

    Spin echo: S = PD (1 - e^(-TR/T1)) e^(-TE/T2). Inversion recovery (FLAIR):
    S = PD |1 - 2 e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2). Gadolinium shortens T1 as
    1/T1' = 1/T1 + r1 [Gd]. Diffusion weighting multiplies by e^(-b ADC), with fat suppressed.
    """
    t1, t2, pd, adc, _, gd = properties.T
    if sequence.contrast_agent:
        t1 = 1.0 / (1.0 / t1 + GD_R1_PER_MM_S * gd / 1000.0)  # r1 is per second, T1 in ms
    recovery = np.exp(-sequence.tr_ms / t1)
    if sequence.ti_ms is None:
        longitudinal = 1.0 - recovery
    else:
        longitudinal = np.abs(1.0 - 2.0 * np.exp(-sequence.ti_ms / t1) + recovery)
    signal = pd * longitudinal * np.exp(-sequence.te_ms / t2)
    if sequence.b_value > 0:
        signal = signal * np.exp(-sequence.b_value * adc * 1e-3)
        signal[TISSUE_NAMES.index("fat")] *= DWI_FAT_SUPPRESSION
    return signal


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Zero-mean, unit-SD random field varying over ~`spacing` voxels (float32).

    White noise on a coarse grid, Gaussian-smoothed there and linearly upsampled: the same
    low-pass field as smoothing full-resolution noise, at a fraction of the cost.
    """
    coarse = tuple(max(2, int(np.ceil(n / spacing)) + 1) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="nearest")
    up = ndimage.zoom(noise, [n / c for n, c in zip(shape, coarse, strict=True)], order=1)
    up = up[tuple(slice(0, n) for n in shape)].astype(np.float32)
    return (up - up.mean()) / max(float(up.std()), 1e-6)


def render_images(
    tissues: dict[str, np.ndarray], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Images of all modalities from tissue fractions, with subject-level property jitter.

    MR: partial-volume sum of tissue signals, times a smooth bias field (+-10-20%) and a gain,
    then Rician noise |S + n1 + i n2| at SNR 20-40 (relative to white matter). CT: partial-volume
    sum of HU with a smooth 700-1500 HU bone density, plus Gaussian noise of 3-8 HU.
    """
    table = tissue_table()
    population = {m: mr_signal(table, SEQUENCES[m]) for m in SEQUENCES}
    table[:, :4] *= np.clip(1.0 + SUBJECT_JITTER * rng.standard_normal((len(table), 4)), 0.9, 1.1)
    table[:, 4] += np.where(table[:, 2] > 0, rng.normal(0.0, 3.0, len(table)), 0.0)  # air stays
    fractions = np.stack([tissues[n] for n in TISSUE_NAMES]).reshape(len(TISSUE_NAMES), -1)
    shape = tissues["air"].shape
    wm = TISSUE_NAMES.index("wm")
    images = {}
    for modality in SEQUENCES:
        signals = mr_signal(table, SEQUENCES[modality])
        gain = MR_FULL_SCALE * rng.uniform(0.75, 0.95) / population[modality].max()
        clean = (gain * signals.astype(np.float32)) @ fractions
        log_bias = smooth_noise(rng, shape, max(shape) / 2.0).ravel()
        clean *= np.exp(rng.uniform(0.1, 0.2) * log_bias / np.abs(log_bias).max())
        sigma = gain * population[modality][wm] / rng.uniform(20.0, 40.0)
        real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        images[modality] = np.hypot(real, imag).reshape(shape).astype(np.float32)
    bone = TISSUE_NAMES.index("bone")
    lo, hi = BONE_HU_RANGE
    density = lo + (hi - lo) * (
        0.5 + 0.5 * np.tanh(smooth_noise(rng, shape, max(shape) / 4).ravel())
    )
    ct = table[:, 4].astype(np.float32) @ fractions + fractions[bone] * (density - table[bone, 4])
    ct += rng.uniform(3.0, 8.0) * rng.standard_normal(ct.shape, dtype=np.float32)
    images["ct"] = np.maximum(ct, -1024.0).reshape(shape).astype(np.float32)
    return images
