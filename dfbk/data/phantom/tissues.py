"""Image formation of the head phantom: tissue properties, sequences, signal equations, noise.

Kept apart from the anatomy (`dfbk.data.phantom.anatomy`) so the physics can be read, cited and
checked on
its own: tissue-fraction maps go in, MR and CT volumes come out. Relaxation times are for 3 T, in
milliseconds; proton density (PD) is relative to pure water; the apparent diffusion coefficient
(ADC) is in 1e-3 mm^2/s; CT numbers are in Hounsfield units (HU). Sources: Stanisz et al., MRM
54:507 (2005) and Wansapura et al., JMRI 9:531 (1999) for brain and muscle T1/T2; Lu et al., JMRI
22:13 (2005) for CSF T1; Gold et al., AJR 183:343 (2004) for subcutaneous fat; Du & Bydder, NMR
Biomed 26:489 (2013) for cortical bone (T2* < 1 ms, so bone is dark on every conventional
sequence); Sener, Comput Med Imaging Graph 25:299 (2001) for ADCs of brain, CSF, tumour and acute
infarct; Rohrer et al., Invest Radiol 40:715 (2005) for the gadolinium relaxivity r1 at 3 T;
Dixon et al., Magn Reson Imaging 8:417 (1990) and Melki & Mulkern, MRM 24:189 (1992) for the
incidental magnetisation transfer (MT) of multi-slice fast spin echo, which darkens white matter
more than grey on T2 and FLAIR. Lesion values are typical of glioblastoma (necrotic core,
vasogenic oedema, enhancing rim) and of an acute (< 24 h) ischaemic stroke.
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
    mt: float = 0.0  # fraction of signal lost to incidental MT in multi-slice fast spin echo


# Order matters: it is the first axis of the tissue-fraction stack in `dfbk.data.phantom.anatomy`.
# MT loss scales with the macromolecular (myelin, protein) pool: white matter loses most, grey
# matter about half as much, muscle/skin much, free water (CSF, necrosis) and fat nothing. Vasogenic
# oedema dilutes the pool and lengthens T1 to about twice white matter's, so it is dark on T1 and
# bright on T2/FLAIR, as on clinical images.
TISSUES: dict[str, Tissue] = {
    "csf": Tissue(t1_ms=4300.0, t2_ms=2000.0, pd=1.00, adc=3.00, hu=8.0),
    "gm": Tissue(t1_ms=1600.0, t2_ms=95.0, pd=0.82, adc=0.85, hu=40.0, gd_mm=0.03, mt=0.10),
    "wm": Tissue(t1_ms=1000.0, t2_ms=70.0, pd=0.70, adc=0.75, hu=26.0, gd_mm=0.015, mt=0.18),
    "bone": Tissue(t1_ms=250.0, t2_ms=0.8, pd=0.15, adc=0.30, hu=1100.0),
    "fat": Tissue(t1_ms=380.0, t2_ms=130.0, pd=0.90, adc=0.02, hu=-100.0),
    "skin": Tissue(t1_ms=1400.0, t2_ms=45.0, pd=0.75, adc=1.50, hu=45.0, gd_mm=0.10, mt=0.20),
    "necrosis": Tissue(t1_ms=3000.0, t2_ms=400.0, pd=0.95, adc=2.00, hu=15.0),
    "oedema": Tissue(t1_ms=2000.0, t2_ms=220.0, pd=0.88, adc=1.50, hu=18.0, mt=0.05),
    "enhancing": Tissue(t1_ms=1600.0, t2_ms=120.0, pd=0.85, adc=1.00, hu=38.0, gd_mm=0.40, mt=0.05),
    "stroke": Tissue(t1_ms=1300.0, t2_ms=110.0, pd=0.82, adc=0.40, hu=20.0, mt=0.08),
    "air": Tissue(t1_ms=1000.0, t2_ms=1.0, pd=0.0, adc=0.0, hu=-1000.0),  # no MR signal
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)
# Lesion tissue -> BraTS-style label value (dfbk.data.phantom.anatomy.LABELS).
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
    multislice_mt: bool = False  # 2-D multi-slice fast spin echo: tissues lose `Tissue.mt`


def flair_null_ti(t1_ms: float, tr_ms: float) -> float:
    """Inversion time that nulls a tissue of T1 `t1_ms`: 1 - 2 e^(-TI/T1) + e^(-TR/T1) = 0.

    For TR >> T1 this is the familiar TI = T1 ln 2; the exact form keeps CSF nulled at TR = 9 s.
    """
    return float(t1_ms * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1_ms))))


_FLAIR_TR_MS = 9000.0
# Clinical 3 T protocols: T1 spin echo, dual-echo PD/T2 fast spin echo, FLAIR nulling the CSF of
# the population table (a scanner does not know the subject's T1), fat-saturated EPI DWI. The
# long echo trains of multi-slice PD/T2/FLAIR saturate the macromolecular pool through the other
# slices' refocusing pulses (incidental MT); the T1 spin echo's few pulses do not, nor does EPI.
SEQUENCES: dict[str, Sequence] = {
    "t1n": Sequence(tr_ms=500.0, te_ms=10.0),
    "t1c": Sequence(tr_ms=500.0, te_ms=10.0, contrast_agent=True),
    "t2w": Sequence(tr_ms=4000.0, te_ms=100.0, multislice_mt=True),
    "t2f": Sequence(
        tr_ms=_FLAIR_TR_MS,
        te_ms=120.0,
        ti_ms=flair_null_ti(TISSUES["csf"].t1_ms, _FLAIR_TR_MS),
        multislice_mt=True,
    ),
    "pd": Sequence(tr_ms=4000.0, te_ms=15.0, multislice_mt=True),
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
    1/T1' = 1/T1 + r1 [Gd]. Diffusion weighting multiplies by e^(-b ADC), with fat suppressed;
    multi-slice fast spin echo by (1 - MT loss) (`tissue_scale`).
    """
    t1, t2, pd, adc, _, gd = properties.T
    return signal_equation(t1, t2, pd, adc, gd, sequence) * tissue_scale(sequence)


def tissue_scale(sequence: Sequence) -> np.ndarray:
    """Per-tissue signal factor of what the signal equation leaves out, in `TISSUES` order.

    Fat suppression of EPI DWI, and the incidental MT loss of multi-slice fast spin echo (the
    macromolecular pool saturated by the other slices' refocusing pulses, Dixon et al. 1990).
    """
    scale = np.ones(len(TISSUES))
    if sequence.b_value > 0:
        scale[TISSUE_NAMES.index("fat")] = DWI_FAT_SUPPRESSION
    if sequence.multislice_mt:
        scale *= 1.0 - np.array([t.mt for t in TISSUES.values()])
    return scale


def signal_equation(t1, t2, pd, adc, gd, sequence: Sequence):
    """The signal equations of `mr_signal` on property arrays of any (common) shape."""
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
    return signal


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """Zero-mean, unit-SD random field varying over ~`spacing` voxels (float32).

    White noise on a coarse grid, Gaussian-smoothed there and linearly upsampled: the same
    low-pass field as smoothing full-resolution noise, at a fraction of the cost.
    """
    coarse = tuple(max(2, int(np.ceil(n / spacing)) + 1) for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), 1.0, mode="nearest")
    up = noise
    for axis, n in enumerate(shape):  # separable linear interpolation, as zoom(order=1)
        up = np.moveaxis(np.tensordot(_linear_weights(up.shape[axis], n), up, (1, axis)), 0, axis)
    up = up.astype(np.float32)
    return (up - up.mean()) / max(float(up.std()), 1e-6)


def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) matrix of linear interpolation with end points aligned (scipy zoom's grid)."""
    position = np.arange(size_out) * ((size_in - 1) / max(size_out - 1, 1))
    low = np.minimum(np.floor(position).astype(int), size_in - 2)
    frac = position - low
    weights = np.zeros((size_out, size_in))
    weights[np.arange(size_out), low] = 1.0 - frac
    weights[np.arange(size_out), low + 1] = frac
    return weights


# Tissue texture: relative SD of the voxel-wise (T1, T2, ADC) and PD variation of each tissue
# around its subject value. Healthy tissue varies by a few percent (myelin and iron content,
# cortical layers), relaxation more than water content; tumour and infarct are heterogeneous
# (necrosis, cysts, haemorrhage), so lesions vary more. CSF and air are homogeneous.
TEXTURE_SD: dict[str, tuple[float, float]] = {
    "gm": (0.06, 0.01),
    "wm": (0.06, 0.01),
    "bone": (0.05, 0.03),
    "fat": (0.03, 0.02),
    "skin": (0.04, 0.02),
    "necrosis": (0.12, 0.05),
    "oedema": (0.08, 0.04),
    "enhancing": (0.12, 0.06),
    "stroke": (0.08, 0.04),
}
TEXTURE_SCALES_MM: tuple[float, ...] = (1.0, 2.5, 6.0)  # correlation lengths, summed equally
TEXTURE_PD_CORRELATION = 0.5  # shared part of the relaxation and PD fields


def _periodic_field(rng: np.random.Generator, shape: tuple[int, ...], voxel_mm: float):
    """Zero-mean, unit-SD multi-scale field with periodic boundaries (so rolls stay seamless)."""
    total = np.zeros(shape, np.float32)
    for scale_mm in TEXTURE_SCALES_MM:
        sigma = scale_mm / voxel_mm
        white = rng.standard_normal(shape, dtype=np.float32)
        part = ndimage.gaussian_filter(white, sigma, mode="wrap") if sigma >= 0.3 else white
        total += part / max(float(part.std()), 1e-6)
    return (total - total.mean()) / max(float(total.std()), 1e-6)


def texture_fields(
    rng: np.random.Generator, shape: tuple[int, ...], voxel_mm: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-tissue relative (relaxation, PD) variation maps, flattened, for `render_images`.

    Two multi-scale fields are drawn per subject; each tissue sees them rolled by its own random
    offset, which decorrelates tissues at the cost of two fields instead of two per tissue. T1,
    T2 and ADC move together (more myelin or cellularity shortens all three), PD partly so.
    """
    relaxation = _periodic_field(rng, shape, voxel_mm)
    density = _periodic_field(rng, shape, voxel_mm)
    mix = np.sqrt(1.0 - TEXTURE_PD_CORRELATION**2)
    fields = {}
    for tissue, (sd_relaxation, sd_pd) in TEXTURE_SD.items():
        shift = tuple(int(v) for v in rng.integers(0, shape))
        axes = tuple(range(len(shape)))
        r = np.roll(relaxation, shift, axes).ravel()
        p = TEXTURE_PD_CORRELATION * r + mix * np.roll(density, shift, axes).ravel()
        fields[tissue] = (
            np.clip(sd_relaxation * r, -0.4, 0.4),
            np.clip(sd_pd * p, -0.4, 0.4),
        )
    return fields


def _textured(
    fractions: np.ndarray,
    table: np.ndarray,
    texture: dict[str, tuple[np.ndarray, np.ndarray]],
    value,
) -> np.ndarray:
    """Partial-volume sum over tissues of `value(k, t1, t2, pd, adc, hu, gd)` for tissue row k.

    Untextured tissues use their table row; textured ones a per-voxel row, computed only where
    the tissue is present.
    """
    constant = np.array([value(k, *row) for k, row in enumerate(table)], dtype=np.float32)
    out = constant @ fractions
    for name, (relaxation, pd) in texture.items():
        k = TISSUE_NAMES.index(name)
        where = np.flatnonzero(fractions[k] > 0)
        if where.size == 0:
            continue
        t1, t2, pdv, adc, hu, gd = table[k]
        r, p = relaxation[where], pd[where]
        varied = value(
            k, t1 * (1 + r), t2 * (1 + r), pdv * (1 + p), adc * (1 + r), hu * (1 + r), gd
        )
        out[where] += fractions[k, where] * (varied - constant[k]).astype(np.float32)
    return out


def acquisition_blur(
    image: np.ndarray, fwhm_mm: tuple[float, float, float], voxel_mm: float
) -> np.ndarray:
    """Point spread of an acquisition of resolution `fwhm_mm` per axis, on a `voxel_mm` grid.

    Clinical T2 and FLAIR (and often T1) are 2-D acquisitions with 2-6 mm slices that the
    datasets resample to 1 mm (Bakas et al., Sci Data 4:170117, 2017), so through-plane detail is
    lost in one direction per sequence. Modelled as a Gaussian whose FWHM adds to the voxel's.
    """
    sigma = [np.sqrt(max(f**2 - voxel_mm**2, 0.0)) / 2.355 / voxel_mm for f in fwhm_mm]
    if max(sigma) <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def render_images(
    tissues: dict[str, np.ndarray],
    rng: np.random.Generator,
    texture: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    resolution: dict[str, tuple[float, float, float]] | None = None,
    voxel_mm: float = 1.0,
    snr: tuple[float, float] = (20.0, 40.0),
) -> dict[str, np.ndarray]:
    """Images of all modalities from tissue fractions, with subject-level property jitter.

    MR: partial-volume sum of tissue signals, times a smooth bias field (+-10-20%) and a gain,
    then Rician noise |S + n1 + i n2| at SNR 20-40 (relative to white matter). CT: partial-volume
    sum of HU with a smooth 700-1500 HU bone density, plus Gaussian noise of 3-8 HU. `texture`
    (from `texture_fields`) varies each tissue's properties voxel by voxel around its value;
    `resolution` (modality -> acquired FWHM per axis, mm) blurs a sequence before its noise;
    `snr` is the range the white-matter SNR of each sequence is drawn from.
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
        sequence = SEQUENCES[modality]
        signals = mr_signal(table, sequence)
        gain = MR_FULL_SCALE * rng.uniform(0.75, 0.95) / population[modality].max()
        if texture:
            scale = tissue_scale(sequence)

            def value(k, t1, t2, pd, adc, hu, gd, sequence=sequence, scale=scale):
                return scale[k] * signal_equation(t1, t2, pd, adc, gd, sequence)

            clean = (gain * _textured(fractions, table, texture, value)).astype(np.float32)
        else:
            clean = (gain * signals.astype(np.float32)) @ fractions
        if resolution and modality in resolution:
            blurred = acquisition_blur(clean.reshape(shape), resolution[modality], voxel_mm)
            clean = blurred.ravel().astype(np.float32)
        log_bias = smooth_noise(rng, shape, max(shape) / 2.0).ravel()
        clean *= np.exp(rng.uniform(0.1, 0.2) * log_bias / np.abs(log_bias).max())
        sigma = gain * population[modality][wm] / rng.uniform(*snr)
        real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        images[modality] = np.hypot(real, imag).reshape(shape).astype(np.float32)
    bone = TISSUE_NAMES.index("bone")
    lo, hi = BONE_HU_RANGE
    density = lo + (hi - lo) * (
        0.5 + 0.5 * np.tanh(smooth_noise(rng, shape, max(shape) / 4).ravel())
    )
    if texture:  # bone's HU comes from its density field below, not from its texture
        soft = {k: v for k, v in texture.items() if k != "bone"}
        ct = _textured(fractions, table, soft, lambda k, t1, t2, pd, adc, hu, gd: hu)
    else:
        ct = table[:, 4].astype(np.float32) @ fractions
    ct = ct + fractions[bone] * (density - table[bone, 4])
    ct += rng.uniform(3.0, 8.0) * rng.standard_normal(ct.shape, dtype=np.float32)
    images["ct"] = np.maximum(ct, -1024.0).reshape(shape).astype(np.float32)
    return images
