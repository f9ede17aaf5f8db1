"""Encoder names and default prompts (METHOD.md section 5), importable without torch.

The CLI's --help and the Snakefile read these; keeping them apart from the encoders means a
`dfbk` call that never encodes text does not pay for importing torch.
"""

from __future__ import annotations

ENCODERS = ("auto", "biomedclip", "minilm", "none")

DEFAULT_PROMPTS: dict[str, list[str]] = {
    "t1n": [
        "axial T1-weighted brain MRI; white matter brighter than grey matter, "
        "cerebrospinal fluid dark"
    ],
    "t1c": [
        "axial contrast-enhanced T1-weighted brain MRI; enhancing tumour rim and vessels bright"
    ],
    "t2w": [
        "axial T2-weighted brain MRI; cerebrospinal fluid and oedema bright, "
        "white matter darker than grey"
    ],
    "t2f": [
        "axial T2-FLAIR brain MRI; cerebrospinal fluid suppressed and dark, "
        "oedema and lesions bright"
    ],
    "dwi": [
        "axial diffusion-weighted brain MRI; acute ischaemic lesions with restricted "
        "diffusion bright"
    ],
    "ct": [
        "axial head CT; bone bright white, brain parenchyma grey, cerebrospinal fluid and air dark"
    ],
    "pd": [
        "axial proton-density-weighted brain MRI; grey matter brighter than white matter, "
        "cerebrospinal fluid bright"
    ],
}
