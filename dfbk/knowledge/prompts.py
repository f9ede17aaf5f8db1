"""Encoder names, default prompts and the cache format version, importable without torch.

The CLI's --help and the Snakefile read these; keeping them apart from the encoders means a
`dfbk` call that never encodes text does not pay for importing torch.

Several prompts per modality: each states one textbook fact about how tissues look in that
contrast (physics of the sequence, fluid, grey/white matter, lesions), so Knowledge Guidance
attends over many tokens that carry different facts, not over one sentence. The first prompt
of each modality is the short description of docs/method.md §5.
"""

from __future__ import annotations

ENCODERS = ("auto", "biomedclip", "minilm", "none")

# Bumped whenever the knowledge file layout changes; an older file is refused by
# `load_knowledge` and re-encoded by `encode_or_load` (the Snakemake rule passes it as a param,
# so a version change also reruns the rule).
KNOWLEDGE_FORMAT_VERSION = 2

DEFAULT_PROMPTS: dict[str, list[str]] = {
    "t1n": [
        "axial T1-weighted brain MRI; white matter brighter than grey matter, "
        "cerebrospinal fluid dark",
        "T1-weighted image with short repetition and echo times; contrast follows T1 "
        "relaxation, fat and bone marrow are bright",
        "on T1-weighted MRI the ventricles and sulci are dark and the scalp fat is bright",
        "oedema, most tumours and infarcts are hypointense on T1-weighted images without contrast",
    ],
    "t1c": [
        "axial contrast-enhanced T1-weighted brain MRI; enhancing tumour rim and vessels bright",
        "post-gadolinium T1-weighted image; gadolinium shortens T1, so enhancing tissue "
        "becomes hyperintense",
        "where the blood-brain barrier is disrupted the tumour enhances while its necrotic "
        "core stays dark",
        "dural venous sinuses, choroid plexus and the pituitary enhance normally after contrast",
    ],
    "t2w": [
        "axial T2-weighted brain MRI; cerebrospinal fluid and oedema bright, "
        "white matter darker than grey",
        "T2-weighted image with long repetition and echo times; tissue with high water "
        "content is hyperintense",
        "on T2-weighted MRI the ventricles and sulci are bright and the skull is dark",
        "peritumoural oedema, gliosis and most lesions are hyperintense on T2-weighted images",
    ],
    "t2f": [
        "axial T2-FLAIR brain MRI; cerebrospinal fluid suppressed and dark, "
        "oedema and lesions bright",
        "fluid-attenuated inversion recovery; an inversion pulse nulls the signal of free water",
        "on FLAIR the ventricles are dark while periventricular white matter lesions are bright",
        "FLAIR shows vasogenic oedema and non-enhancing tumour as hyperintense regions",
    ],
    "dwi": [
        "axial diffusion-weighted brain MRI; acute ischaemic lesions with restricted "
        "diffusion bright",
        "diffusion-weighted image at high b-value; restricted water diffusion is hyperintense",
        "on diffusion-weighted MRI the cerebrospinal fluid is dark because water diffuses freely",
        "acute infarcts are bright on DWI within minutes of onset, with a low apparent "
        "diffusion coefficient",
    ],
    "ct": [
        "axial head CT; bone bright white, brain parenchyma grey, cerebrospinal fluid and air dark",
        "computed tomography measures attenuation in Hounsfield units; air is -1000, water 0 "
        "and cortical bone above 700",
        "on head CT the skull and calcifications are hyperdense and cerebrospinal fluid is "
        "hypodense",
        "on non-contrast head CT grey matter is slightly denser than white matter",
    ],
    "pd": [
        "axial proton-density-weighted brain MRI; grey matter brighter than white matter, "
        "cerebrospinal fluid bright",
        "proton-density-weighted image with long repetition time and short echo time; "
        "contrast reflects hydrogen density",
        "on proton-density MRI grey matter is slightly brighter than white matter",
    ],
}
