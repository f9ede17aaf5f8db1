"""Image formation of the head phantom: tissue properties, sequences, signal equations, noise.

Kept apart from the anatomy (`dfbk.data.phantom.anatomy`) so the physics can be read, cited and
checked on
its own: tissue-fraction maps go in, MR and CT volumes come out. Relaxation times are for 3 T, in
milliseconds; proton density (PD) is relative to CSF; the apparent diffusion coefficient (ADC) is
in 1e-3 mm^2/s; CT numbers are in Hounsfield units (HU).

Sources of the brain values (the ranges of `RELAXATION_3T` and the other tables below):
- Wansapura et al., J Magn Reson Imaging 9:531 (1999): 3 T, white matter T1 832 / T2 79.2 ms,
  grey matter T1 1331 / T2 110 ms (and the brain T2* of about 45 ms commonly quoted from it);
- Stanisz et al., Magn Reson Med 54:507 (2005): 3 T, white matter T1 1084 / T2 69 ms, grey
  matter T1 1820 / T2 99 ms;
- Wright et al., MAGMA 21:121 (2008): 3 T MPRAGE-based T1, white matter 838, grey matter 1607,
  putamen 1332 ms; at 1.5 T 646 and 1197 ms;
- Bojorquez et al., Magn Reson Imaging 35:69 (2017): review of 3 T values (white-matter T1 is
  reported from 699 to 1735 ms), why the two sources above are taken as the range, not one value;
- Lu et al., J Magn Reson Imaging 22:13 (2005): CSF T1 3817 ms at 3 T; T1 14-30 % longer and T2
  12-19 % shorter at 3 T than at 1.5 T (used for the 1.5 T subjects);
- Piechnik et al., Magn Reson Med 61:579 (2009): CSF T2 503 ms in vivo (the short end; nearly
  free water is near 2000 ms);
- Ernst et al., J Magn Reson B 102:1 (1993), as used by Gasparovic et al., Magn Reson Med
  55:1219 (2006): water content grey matter 0.78, white matter 0.65, CSF 0.97 (the PD ratios);
- Alsop et al., Magn Reson Med 73:102 (2015): blood T1 1650 ms at 3 T (vessels);
- Blystad et al., Sci Rep 10 (2020), doi:10.1038/s41598-020-75105-6: after gadolinium, R1 rises
  by 0.032 /s in normal-appearing white matter and 0.047 /s in peritumoral oedema;
- de Blank et al., MR fingerprinting of childhood and young-adult brain tumours (2019; read from
  a summary of its abstract): high-grade tumour T1 1863 ms and peritumoral white matter 1261 ms
  against 933-938 ms in contralateral white matter, i.e. about 2 and 1.35 times (lesion values).
Others as before: Gold et al., AJR 183:343 (2004), subcutaneous fat; Du & Bydder, NMR Biomed
26:489 (2013), cortical bone (T2* < 1 ms: dark on every conventional sequence); Sener, Comput Med
Imaging Graph 25:299 (2001), ADCs of brain, CSF, tumour and infarct; Rohrer et al., Invest Radiol
40:715 (2005), gadolinium relaxivity r1 at 3 T.

Sequences follow the consensus Brain Tumor Imaging Protocol (Ellingson et al., Neuro-Oncology
17:1188, 2015: inversion-prepared 3-D T1 gradient echo before and after contrast, 2-D T2 turbo
spin echo, 2-D FLAIR) with the parameter ranges of a multi-centre clinical protocol (Aalten et
al., BMC Neurology 14:254, 2014: T2 TSE TR 2000-4000 / TE 80-120 ms; FLAIR TR 8000-12000 / TE
100-150 / TI 2200-2800 ms); BraTS's native T1 is often a 2-D acquisition (Bakas et al., Sci Data
4:170117, 2017), modelled as a spin echo.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

MR_FULL_SCALE = 1000.0  # arbitrary units: the brightest tissue lands at 750-950
BIAS_AMPLITUDE: tuple[float, float] = (0.03, 0.08)  # peak relative change of the coil bias field
SUBJECT_JITTER = 0.03  # subject-level relative SD of the properties not drawn from `RELAXATION_3T`

# (T1, T2) in ms at 3 T of white and grey matter, per source (module docstring). A subject's
# values are drawn between the sources, one draw for T1 and one for T2 shared by both tissues,
# so its grey/white ratios stay between the sources' ratios.
RELAXATION_3T: dict[str, dict[str, tuple[float, float]]] = {
    "Wansapura 1999": {"wm": (832.0, 79.2), "gm": (1331.0, 110.0)},
    "Stanisz 2005": {"wm": (1084.0, 69.0), "gm": (1820.0, 99.0)},
}
CSF_T1_MS: float = 3817.0  # Lu et al. 2005
CSF_T2_RANGE_MS: tuple[float, float] = (503.0, 2000.0)  # Piechnik et al. 2009 to free water
WATER_CONTENT: dict[str, float] = {"gm": 0.78, "wm": 0.65, "csf": 0.97}  # Ernst et al. 1993
BRAIN_T2STAR_MS: float = 45.0  # Wansapura et al. 1999, for the 3-D gradient echo (TE ~ 3 ms)
# 1.5 T relative to 3 T (Lu et al. 2005): T1 14-30 % shorter, T2 12-19 % longer; mid-range.
FIELD_1P5T_SCALE: tuple[float, float] = (1.0 / 1.22, 1.0 / (1.0 - 0.155))


def _mid(a: float, b: float) -> float:
    return 0.5 * (a + b)


_WM_T1 = _mid(*(s["wm"][0] for s in RELAXATION_3T.values()))
_WM_T2 = _mid(*(s["wm"][1] for s in RELAXATION_3T.values()))
_GM_T1 = _mid(*(s["gm"][0] for s in RELAXATION_3T.values()))
_GM_T2 = _mid(*(s["gm"][1] for s in RELAXATION_3T.values()))
_PD = {t: w / WATER_CONTENT["csf"] for t, w in WATER_CONTENT.items()}


@dataclass(frozen=True)
class Tissue:
    """Population-mean properties of one tissue at 3 T (units in the module docstring)."""

    t1_ms: float
    t2_ms: float
    pd: float
    adc: float  # 1e-3 mm^2/s
    hu: float  # Hounsfield units; bone's value is replaced by a smooth 700-1500 HU field
    gd_mm: float = 0.0  # gadolinium concentration after injection (mmol/l), for `t1c`
    t2s_ms: float | None = None  # T2* of the gradient echo; None: 0.6 T2 (brain's 45 / 75 ms)
    flow_void: float = 0.0  # signal lost on spin echoes by blood that leaves the slice
    mt: float = 0.0  # fraction of signal lost to incidental MT in multi-slice fast spin echo


# Order matters: it is the first axis of the tissue-fraction stack in `dfbk.data.phantom.anatomy`.
# Lesions, relative to white matter: the enhancing (solid) tumour has about twice its T1 (de Blank
# et al. 2019) and a moderately long T2; the necrotic / non-enhancing core is wetter still; the
# oedema entry is its fully oedematous end (about 1.6 x T1 and 2.2 x T2 of white matter), and the
# phantom grades it towards white matter away from the tumour, so its mean over the BraTS oedema
# label is near the 1.35 x T1 of peritumoral white matter in de Blank et al. Gadolinium: the
# concentrations give Blystad et al.'s R1 rise in white matter and oedema (r1 = 4 /(mM s));
# the enhancing rim and the blood pool take up far more. Incidental magnetisation transfer (MT)
# of multi-slice fast spin echo (Dixon et al., Magn Reson Imaging 8:417, 1990; Melki & Mulkern,
# Magn Reson Med 24:189, 1992) scales with the macromolecular pool: white matter loses most,
# grey matter about half as much, muscle/skin much, oedema and tumour little, fluids nothing.
TISSUES: dict[str, Tissue] = {
    "csf": Tissue(CSF_T1_MS, 1500.0, 1.00, 3.00, 8.0, t2s_ms=1000.0),
    "gm": Tissue(
        _GM_T1, _GM_T2, _PD["gm"], 0.85, 40.0, gd_mm=0.016, t2s_ms=BRAIN_T2STAR_MS, mt=0.10
    ),
    "wm": Tissue(
        _WM_T1, _WM_T2, _PD["wm"], 0.75, 26.0, gd_mm=0.008, t2s_ms=BRAIN_T2STAR_MS, mt=0.18
    ),
    "bone": Tissue(250.0, 0.8, 0.15, 0.30, 1100.0, t2s_ms=0.5),
    "fat": Tissue(380.0, 130.0, 0.90, 0.02, -100.0),
    "skin": Tissue(1400.0, 45.0, 0.75, 1.50, 45.0, gd_mm=0.10, mt=0.20),
    "necrosis": Tissue(2.2 * _WM_T1, 2.6 * _WM_T2, 0.88, 2.00, 15.0, gd_mm=0.02),
    "oedema": Tissue(1.6 * _WM_T1, 2.2 * _WM_T2, 0.80, 1.50, 18.0, gd_mm=0.012, mt=0.05),
    "enhancing": Tissue(2.0 * _WM_T1, 1.75 * _WM_T2, 0.82, 1.00, 38.0, gd_mm=0.30, mt=0.05),
    "stroke": Tissue(1300.0, 110.0, 0.80, 0.40, 20.0, mt=0.08),
    "vessel": Tissue(1650.0, 100.0, 0.87, 1.50, 40.0, gd_mm=0.50, flow_void=0.8),
    "air": Tissue(1000.0, 1.0, 0.0, 0.0, -1000.0),  # no MR signal
}
TISSUE_NAMES: tuple[str, ...] = tuple(TISSUES)
# Lesion tissue -> BraTS-style label value (dfbk.data.phantom.anatomy.LABELS).
LESION_LABELS: dict[str, int] = {"necrosis": 1, "oedema": 2, "enhancing": 3, "stroke": 4}
# Tissues whose relaxation follows the field strength (CSF is nearly free water; bone has no
# signal; air none).
_FIELD_DEPENDENT = tuple(t for t in TISSUE_NAMES if t not in ("csf", "bone", "air"))

BONE_HU_RANGE: tuple[float, float] = (700.0, 1500.0)  # diploe to cortical table
GD_R1_PER_MM_S: float = 4.0  # longitudinal relaxivity r1 of gadolinium chelates at 3 T, 1/(mM s)
DWI_B_S_PER_MM2: float = 1000.0
DWI_FAT_SUPPRESSION: float = 0.05  # EPI DWI is fat-saturated: fat keeps ~5% of its signal


@dataclass(frozen=True)
class Sequence:
    """Acquisition parameters of one MR contrast (times in ms, flip angle in degrees).

    `kind`: "se" (spin echo or turbo spin echo), "ir" (inversion-recovery turbo spin echo:
    FLAIR) or "irgre" (inversion-prepared 3-D gradient echo, MPRAGE-like: `ti_ms` from the
    inversion to the centre of k-space, `n_readout` pulses of `flip_deg` every
    `echo_spacing_ms`, the whole cycle `tr_ms`).
    """

    tr_ms: float
    te_ms: float
    ti_ms: float | None = None
    kind: str = "se"
    contrast_agent: bool = False
    b_value: float = 0.0  # s/mm^2; diffusion weighting when > 0
    flip_deg: float = 90.0
    n_readout: int = 160
    echo_spacing_ms: float = 7.0
    multislice_mt: bool = False  # 2-D multi-slice fast spin echo: tissues lose `Tissue.mt`


def flair_null_ti(t1_ms: float, tr_ms: float) -> float:
    """Inversion time that nulls a tissue of T1 `t1_ms`: 1 - 2 e^(-TI/T1) + e^(-TR/T1) = 0.

    For TR >> T1 this is the familiar TI = T1 ln 2; the exact form keeps CSF nulled at TR = 8-12 s.
    """
    return float(t1_ms * np.log(2.0 / (1.0 + np.exp(-tr_ms / t1_ms))))


def flair(tr_ms: float, te_ms: float) -> Sequence:
    """2-D multi-slice FLAIR nulling the population's CSF (a scanner does not know the subject)."""
    return Sequence(tr_ms, te_ms, flair_null_ti(CSF_T1_MS, tr_ms), kind="ir", multislice_mt=True)


def turbo_spin_echo(tr_ms: float, te_ms: float) -> Sequence:
    """2-D multi-slice T2 (or PD) turbo spin echo."""
    return Sequence(tr_ms, te_ms, multislice_mt=True)


def ir_gradient_echo(ti_ms: float, flip_deg: float, contrast_agent: bool = False) -> Sequence:
    """MPRAGE-like 3-D T1: cycle 2300 ms, 160 readouts 7 ms apart, TE 3 ms (typical 3 T values)."""
    return Sequence(
        2300.0, 3.0, ti_ms, kind="irgre", contrast_agent=contrast_agent, flip_deg=flip_deg
    )


# Parameter ranges a protocol is drawn from (`draw_protocol`), and over which the literature
# contrast ranges of `literature_ratio_range` are computed. T2 and FLAIR: Aalten et al. 2014; the
# FLAIR TI then follows from TR (2203-2485 ms, inside their 2200-2800); the 3-D T1's TI and flip
# angle, and the 2-D T1 spin echo's TR/TE, are typical product values (no protocol cited).
PROTOCOL_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "t1n": {"tr_ms": (400.0, 600.0), "te_ms": (8.0, 15.0)},
    "t1c": {"ti_ms": (900.0, 1100.0), "flip_deg": (8.0, 12.0)},
    "t2w": {"tr_ms": (2000.0, 4000.0), "te_ms": (80.0, 120.0)},
    "t2f": {"tr_ms": (8000.0, 12000.0), "te_ms": (100.0, 150.0)},
}

# The default protocol (mid-range), used when a subject is not given its own: 2-D T1 spin echo,
# 3-D inversion-prepared gradient echo after gadolinium, T2 TSE, FLAIR, PD from the dual-echo
# TSE, fat-saturated EPI DWI.
SEQUENCES: dict[str, Sequence] = {
    "t1n": Sequence(500.0, 10.0),
    "t1c": ir_gradient_echo(1000.0, 10.0, contrast_agent=True),
    "t2w": turbo_spin_echo(3000.0, 100.0),
    "t2f": flair(10000.0, 125.0),
    "pd": turbo_spin_echo(3000.0, 15.0),
    "dwi": Sequence(5000.0, 80.0, b_value=DWI_B_S_PER_MM2),
}


def draw_protocol(rng: np.random.Generator, t1n_3d: bool = False) -> dict[str, Sequence]:
    """One site's protocol: each parameter of `PROTOCOL_RANGES` drawn uniformly.

    `t1n_3d`: the native T1 is the same inversion-prepared 3-D gradient echo as the T1c
    (parameter-matched, as the consensus protocol asks) instead of a 2-D spin echo.
    """

    def draw(modality: str, name: str) -> float:
        return float(rng.uniform(*PROTOCOL_RANGES[modality][name]))

    t1c = ir_gradient_echo(draw("t1c", "ti_ms"), draw("t1c", "flip_deg"), contrast_agent=True)
    protocol = dict(SEQUENCES)
    protocol["t1n"] = (
        replace(t1c, contrast_agent=False)
        if t1n_3d
        else Sequence(draw("t1n", "tr_ms"), draw("t1n", "te_ms"))
    )
    protocol["t1c"] = t1c
    protocol["t2w"] = turbo_spin_echo(draw("t2w", "tr_ms"), draw("t2w", "te_ms"))
    protocol["t2f"] = flair(draw("t2f", "tr_ms"), draw("t2f", "te_ms"))
    return protocol


def tissue_table() -> np.ndarray:
    """Population properties as a (tissue, 7) float64 array: T1, T2, PD, ADC, HU, Gd, T2*."""
    return np.array(
        [
            [t.t1_ms, t.t2_ms, t.pd, t.adc, t.hu, t.gd_mm, t.t2s_ms or 0.6 * t.t2_ms]
            for t in TISSUES.values()
        ],
        dtype=np.float64,
    )


def subject_table(rng: np.random.Generator, field_t: float = 3.0) -> np.ndarray:
    """One subject's properties (`tissue_table` layout) at `field_t` tesla (3 or 1.5).

    Grey and white matter T1 and T2 are drawn between the sources of `RELAXATION_3T` (one
    fraction for T1, one for T2, shared by both), the CSF's T2 within `CSF_T2_RANGE_MS`, and
    their PD is `WATER_CONTENT`'s; every other T1, T2, PD, and every ADC, varies by
    `SUBJECT_JITTER`, HU by 3 (air stays). At 1.5 T, T1 and T2 of the field-dependent tissues
    are scaled by `FIELD_1P5T_SCALE`.
    """
    table = tissue_table()
    jitter = np.clip(1.0 + SUBJECT_JITTER * rng.standard_normal((len(table), 4)), 0.9, 1.1)
    for tissue in ("gm", "wm", "csf"):  # T1, T2 drawn below; PD from `WATER_CONTENT`
        jitter[TISSUE_NAMES.index(tissue), :3] = 1.0
    table[:, :4] *= jitter
    table[:, 4] += np.where(table[:, 2] > 0, rng.normal(0.0, 3.0, len(table)), 0.0)
    u_t1, u_t2 = rng.uniform(0.0, 1.0, 2)
    (low, high) = RELAXATION_3T.values()
    for tissue in ("gm", "wm"):
        k = TISSUE_NAMES.index(tissue)
        for column, u in ((0, u_t1), (1, u_t2)):
            table[k, column] = low[tissue][column] + u * (
                high[tissue][column] - low[tissue][column]
            )
    table[TISSUE_NAMES.index("csf"), 1] = rng.uniform(*CSF_T2_RANGE_MS)
    if field_t < 2.0:
        rows = [TISSUE_NAMES.index(t) for t in _FIELD_DEPENDENT]
        table[rows, 0] *= FIELD_1P5T_SCALE[0]
        table[rows, 1] *= FIELD_1P5T_SCALE[1]
    return table


def mr_signal(properties: np.ndarray, sequence: Sequence) -> np.ndarray:
    """Noise-free magnitude signal of each tissue (rows of `tissue_table()` layout) for `sequence`.

    Spin echo: S = PD (1 - e^(-TR/T1)) e^(-TE/T2). Inversion recovery (FLAIR):
    S = PD |1 - 2 e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2). Inversion-prepared gradient echo: the
    steady state of `_ir_gradient_echo`. Gadolinium shortens T1 as 1/T1' = 1/T1 + r1 [Gd].
    Diffusion weighting multiplies by e^(-b ADC), with fat suppressed; spin echoes lose flowing
    blood and multi-slice fast spin echo the incidental MT (`tissue_scale`).
    """
    t1, t2, pd, adc, _, gd, t2s = properties.T
    return signal_equation(t1, t2, pd, adc, gd, t2s, sequence) * tissue_scale(sequence)


def tissue_scale(sequence: Sequence) -> np.ndarray:
    """Per-tissue signal factor of what the signal equation leaves out, in `TISSUES` order.

    Fat suppression of EPI DWI; the flow void of spin echoes (blood excited by the 90-degree
    pulse has left the slice before the refocusing pulse, so vessels are dark on T2, FLAIR, PD
    and DWI and bright only on the gradient-echo T1c: inflow and gadolinium); the incidental MT
    of multi-slice fast spin echo (the macromolecular pool saturated by the other slices'
    refocusing pulses, Dixon et al. 1990).
    """
    scale = np.ones(len(TISSUES))
    if sequence.b_value > 0:
        scale[TISSUE_NAMES.index("fat")] = DWI_FAT_SUPPRESSION
    if sequence.kind in ("se", "ir"):
        scale *= 1.0 - np.array([t.flow_void for t in TISSUES.values()])
    if sequence.multislice_mt:
        scale *= 1.0 - np.array([t.mt for t in TISSUES.values()])
    return scale


def _ir_gradient_echo(t1, sequence: Sequence):
    """Longitudinal magnetisation (M0 = 1) at the centre of k-space of an MPRAGE-like sequence.

    One cycle: inversion; recovery for TA = TI - n/2 spacing; n pulses of flip a, each followed
    by recovery over one echo spacing; recovery for TD to the next inversion. Every step is an
    affine map of Mz, so the periodic steady state is the fixed point of their composition (a
    closed form written here; the tests check it against a pulse-by-pulse simulation).
    """
    n, spacing = sequence.n_readout, sequence.echo_spacing_ms
    ta = sequence.ti_ms - 0.5 * n * spacing
    td = sequence.tr_ms - ta - n * spacing
    if ta < 0 or td < 0:
        raise ValueError(f"inversion timing does not fit: TI {sequence.ti_ms}, TR {sequence.tr_ms}")
    cos_a = np.cos(np.deg2rad(sequence.flip_deg))
    e_s, e_a, e_d = (np.exp(-t / t1) for t in (spacing, ta, td))

    def train(k: int):  # k pulses: Mz -> a Mz + b
        a = (cos_a * e_s) ** k
        return a, (1.0 - e_s) * (1.0 - a) / (1.0 - cos_a * e_s)

    a_n, b_n = train(n)
    steady = (e_d * (a_n * (1.0 - e_a) + b_n) + (1.0 - e_d)) / (1.0 + e_d * a_n * e_a)
    a_c, b_c = train(n // 2)
    return np.abs(a_c * (-steady * e_a + (1.0 - e_a)) + b_c)


def signal_equation(t1, t2, pd, adc, gd, t2s, sequence: Sequence):
    """The signal equations of `mr_signal` on property arrays of any (common) shape."""
    if sequence.contrast_agent:
        t1 = 1.0 / (1.0 / t1 + GD_R1_PER_MM_S * gd / 1000.0)  # r1 is per second, T1 in ms
    if sequence.kind == "irgre":
        longitudinal = _ir_gradient_echo(t1, sequence) * np.sin(np.deg2rad(sequence.flip_deg))
        return pd * longitudinal * np.exp(-sequence.te_ms / np.maximum(t2s, 1e-3))
    recovery = np.exp(-sequence.tr_ms / t1)
    if sequence.kind == "ir":
        longitudinal = np.abs(1.0 - 2.0 * np.exp(-sequence.ti_ms / t1) + recovery)
    else:
        longitudinal = 1.0 - recovery
    signal = pd * longitudinal * np.exp(-sequence.te_ms / t2)
    if sequence.b_value > 0:
        signal = signal * np.exp(-sequence.b_value * adc * 1e-3)
    return signal


def literature_ratio_range(
    modality: str, a: str, b: str, field_t: float = 3.0, t1n_3d: bool = False
) -> tuple[float, float]:
    """Range of the pure-tissue signal ratio a/b (a, b in gm, wm, csf) that the cited sources give.

    The signal equation of `modality`'s sequence (`t1n_3d`: the native T1 is the 3-D gradient
    echo, as `draw_protocol`), evaluated for each source of `RELAXATION_3T` (with the CSF's T2
    at both ends of `CSF_T2_RANGE_MS`, the PD of `WATER_CONTENT` and the gadolinium of
    `TISSUES` after contrast) at the ends and middle of every parameter range of
    `PROTOCOL_RANGES`; at 1.5 T grey and white matter relaxation scaled by `FIELD_1P5T_SCALE`.
    Multi-slice sequences count both with and without the incidental MT of `TISSUES` (its size
    is the phantom's model, not one of the cited measurements). No noise, blur or partial volume.
    """
    family = "t1c" if modality == "t1n" and t1n_3d else modality
    ranges = PROTOCOL_RANGES[family]
    names = list(ranges)
    grids = [np.linspace(*ranges[n], 3) for n in names]
    t1_scale, t2_scale = FIELD_1P5T_SCALE if field_t < 2.0 else (1.0, 1.0)
    ratios = []
    for source, csf_t2 in itertools.product(RELAXATION_3T.values(), CSF_T2_RANGE_MS):
        values = {t: (source[t][0] * t1_scale, source[t][1] * t2_scale, _PD[t]) for t in source}
        values["csf"] = (CSF_T1_MS, csf_t2, _PD["csf"])
        for point in itertools.product(*grids):
            params = dict(zip(names, point, strict=True))
            if family == "t2f":
                sequence = flair(params["tr_ms"], params["te_ms"])
            elif family == "t1c":
                sequence = ir_gradient_echo(
                    params["ti_ms"], params["flip_deg"], contrast_agent=modality == "t1c"
                )
            elif family == "t2w":
                sequence = turbo_spin_echo(params["tr_ms"], params["te_ms"])
            else:
                sequence = Sequence(params["tr_ms"], params["te_ms"])
            signal = {
                t: signal_equation(t1, t2, pd, 0.0, TISSUES[t].gd_mm, BRAIN_T2STAR_MS, sequence)
                for t, (t1, t2, pd) in values.items()
            }
            ratio = float(signal[a] / signal[b])
            ratios.append(ratio)
            if sequence.multislice_mt:  # with and without the incidental MT of `TISSUES`
                ratios.append(ratio * (1.0 - TISSUES[a].mt) / (1.0 - TISSUES[b].mt))
    return min(ratios), max(ratios)


# Lesion relaxation relative to white matter (T1 ratio, T2 ratio), de Blank et al. 2019:
# peritumoral white matter 1261 / 933 ms and 65 / 38 ms; high-grade tumour 1863 / 938 ms and
# 90 / 38 ms (taken for the BraTS necrotic and non-enhancing core).
LESION_RELAXATION_RATIO: dict[str, tuple[float, float]] = {
    "oedema": (1261.0 / 933.0, 65.0 / 38.0),
    "necrosis": (1863.0 / 938.0, 90.0 / 38.0),
}
LESION_PD_RANGE: tuple[float, float] = (_PD["wm"], 0.9)  # wetter than white matter; assumed


def lesion_literature_ratio_range(
    modality: str, lesion: str, field_t: float = 3.0, t1n_3d: bool = False
) -> tuple[float, float]:
    """Range of the lesion / white-matter signal ratio that `LESION_RELAXATION_RATIO` gives.

    White matter from each source of `RELAXATION_3T`, the lesion's T1 and T2 that multiple of
    it, its PD anywhere in `LESION_PD_RANGE` and its incidental MT between none and white
    matter's, over the protocol grid of `literature_ratio_range`; before contrast.
    """
    family = "t1c" if modality == "t1n" and t1n_3d else modality
    ranges = PROTOCOL_RANGES[family]
    names = list(ranges)
    grids = [np.linspace(*ranges[n], 3) for n in names]
    t1_scale, t2_scale = FIELD_1P5T_SCALE if field_t < 2.0 else (1.0, 1.0)
    t1_ratio, t2_ratio = LESION_RELAXATION_RATIO[lesion]
    mt_wm = TISSUES["wm"].mt
    ratios = []
    for source in RELAXATION_3T.values():
        t1, t2 = source["wm"][0] * t1_scale, source["wm"][1] * t2_scale
        for point in itertools.product(*grids):
            params = dict(zip(names, point, strict=True))
            if family == "t2f":
                sequence = flair(params["tr_ms"], params["te_ms"])
            elif family == "t1c":
                sequence = ir_gradient_echo(params["ti_ms"], params["flip_deg"])
            elif family == "t2w":
                sequence = turbo_spin_echo(params["tr_ms"], params["te_ms"])
            else:
                sequence = Sequence(params["tr_ms"], params["te_ms"])
            wm = signal_equation(t1, t2, _PD["wm"], 0.0, 0.0, BRAIN_T2STAR_MS, sequence)
            for pd in LESION_PD_RANGE:
                lesion_signal = signal_equation(
                    t1 * t1_ratio, t2 * t2_ratio, pd, 0.0, 0.0, BRAIN_T2STAR_MS, sequence
                )
                ratio = float(lesion_signal / wm)
                ratios.append(ratio)
                if sequence.multislice_mt:
                    ratios.append(ratio / (1.0 - mt_wm))
    return min(ratios), max(ratios)


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
# cortical layers), relaxation more than water content: little enough that grey and white
# matter keep separate histogram peaks, as on real scans. Tumour and infarct are heterogeneous
# (necrosis, cysts, haemorrhage), so lesions vary more. CSF and air are homogeneous.
TEXTURE_SD: dict[str, tuple[float, float]] = {
    "gm": (0.025, 0.006),
    "wm": (0.025, 0.006),
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
    grade: dict[str, tuple[str, np.ndarray]] | None = None,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Partial-volume sum over tissues of `value(k, t1, t2, pd, adc, hu, gd, t2s)` for tissue k.

    Untextured tissues use their table row; textured ones a per-voxel row, computed only where
    the tissue is present. `grade` maps a tissue to (partner tissue, per-voxel weight w in
    [0, 1]): its row is then w of its own and 1 - w of the partner's, mixed as relaxation rates
    (1/T1, 1/T2) and linearly otherwise (graded oedema: full oedema near the tumour, nearly
    white matter at its margin); `scale` (per tissue, the `tissue_scale` that `value` applies)
    is mixed the same way.
    """
    grade = grade or {}
    constant = np.array([value(k, *row) for k, row in enumerate(table)], dtype=np.float32)
    out = constant @ fractions
    for name in sorted(set(texture) | set(grade), key=TISSUE_NAMES.index):
        k = TISSUE_NAMES.index(name)
        where = np.flatnonzero(fractions[k] > 0)
        if where.size == 0:
            continue
        t1, t2, pdv, adc, hu, gd, t2s = (np.full(where.size, v) for v in table[k])
        factor = 1.0
        if name in grade:
            partner, weight = grade[name]
            w, other = weight[where], table[TISSUE_NAMES.index(partner)]
            if scale is not None and scale[k] > 0:
                factor = w + (1 - w) * scale[TISSUE_NAMES.index(partner)] / scale[k]
            t1, t2, t2s = (
                1.0 / (w / v + (1 - w) / o)
                for v, o in ((t1, other[0]), (t2, other[1]), (t2s, other[6]))
            )
            pdv, adc, hu, gd = (
                w * v + (1 - w) * o
                for v, o in zip((pdv, adc, hu, gd), other[[2, 3, 4, 5]], strict=True)
            )
        if name in texture:
            relaxation, pd = texture[name]
            r, p = relaxation[where], pd[where]
        else:
            r = p = 0.0
        varied = value(
            k,
            t1 * (1 + r),
            t2 * (1 + r),
            pdv * (1 + p),
            adc * (1 + r),
            hu * (1 + r),
            gd,
            t2s * (1 + r),
        )
        out[where] += fractions[k, where] * (factor * varied - constant[k]).astype(np.float32)
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
    protocol: dict[str, Sequence] | None = None,
    field_t: float = 3.0,
    oedema_grade: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Images of all modalities from tissue fractions, with subject-level property draws.

    MR: partial-volume sum of tissue signals (`subject_table` at `field_t` tesla; `protocol`
    overrides `SEQUENCES` per modality), times a smooth bias field (+-5-15%) and a gain, then
    Rician noise |S + n1 + i n2| at the white-matter SNR drawn from `snr`, which is per 1 mm^3
    voxel (the datasets' grid): a coarser grid averages voxel^3 of them, so its noise is
    voxel^1.5 times smaller, as in a 1 mm volume resampled to it. CT: partial-volume
    sum of HU with a smooth 700-1500 HU bone density, plus Gaussian noise of 3-8 HU. `texture`
    (from `texture_fields`) varies each tissue's properties voxel by voxel around its value;
    `oedema_grade` (same grid as the tissues, 0-1) mixes oedema towards white matter where it
    is below 1; `resolution` (modality -> acquired FWHM per axis, mm) blurs a sequence before
    its noise.
    """
    sequences = {**SEQUENCES, **(protocol or {})}
    table = subject_table(rng, field_t)
    population = {m: mr_signal(tissue_table(), sequences[m]) for m in sequences}
    fractions = np.stack([tissues[n] for n in TISSUE_NAMES]).reshape(len(TISSUE_NAMES), -1)
    shape = tissues["air"].shape
    wm = TISSUE_NAMES.index("wm")
    grade = None if oedema_grade is None else {"oedema": ("wm", oedema_grade.ravel())}
    images = {}
    for modality, sequence in sequences.items():
        gain = MR_FULL_SCALE * rng.uniform(0.75, 0.95) / population[modality].max()
        if texture or grade:
            scale = tissue_scale(sequence)

            def value(k, t1, t2, pd, adc, hu, gd, t2s, sequence=sequence, scale=scale):
                return scale[k] * signal_equation(t1, t2, pd, adc, gd, t2s, sequence)

            clean = gain * _textured(fractions, table, texture or {}, value, grade, scale)
            clean = clean.astype(np.float32)
        else:
            clean = (gain * mr_signal(table, sequence).astype(np.float32)) @ fractions
        if resolution and modality in resolution:
            blurred = acquisition_blur(clean.reshape(shape), resolution[modality], voxel_mm)
            clean = blurred.ravel().astype(np.float32)
        log_bias = smooth_noise(rng, shape, max(shape) / 2.0).ravel()
        clean *= np.exp(rng.uniform(*BIAS_AMPLITUDE) * log_bias / np.abs(log_bias).max())
        sigma = gain * population[modality][wm] / rng.uniform(*snr) / voxel_mm**1.5
        real = clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
        images[modality] = np.hypot(real, imag).reshape(shape).astype(np.float32)
    bone = TISSUE_NAMES.index("bone")
    lo, hi = BONE_HU_RANGE
    density = lo + (hi - lo) * (
        0.5 + 0.5 * np.tanh(smooth_noise(rng, shape, max(shape) / 4).ravel())
    )
    if texture or grade:  # bone's HU comes from its density field below, not from its texture
        soft = {k: v for k, v in (texture or {}).items() if k != "bone"}
        ct = _textured(fractions, table, soft, lambda k, t1, t2, pd, adc, hu, gd, t2s: hu, grade)
    else:
        ct = table[:, 4].astype(np.float32) @ fractions
    ct = ct + fractions[bone] * (density - table[bone, 4])
    ct += rng.uniform(3.0, 8.0) * rng.standard_normal(ct.shape, dtype=np.float32)
    images["ct"] = np.maximum(ct, -1024.0).reshape(shape).astype(np.float32)
    return images
