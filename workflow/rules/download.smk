# download: raw data into {RAW}/{dataset}/. The phantom is synthesised, not downloaded.
# Real datasets: archives, partial downloads and the pinned Zenodo record live in
# {downloads_dir}/{dataset}/ (outside the outputs, which Snakemake deletes when a job fails), so
# an interrupted download resumes; a finished {RAW}/{dataset} is an output and never redone.
# These jobs need the internet, so on a cluster they run on the submit host (localrules).
# Each rule passes the dataset's `download:` settings as JSON. BraTS reads its Synapse token from
# $SYNAPSE_AUTH_TOKEN or ~/.synapseConfig, never from config, params or logs.
# What to do by hand per dataset: docs/data.md, "Getting the data".

DOWNLOADS = config["downloads_dir"]


localrules:
    download_brats2023,
    download_isles2015,
    download_synthrad2023,


# A dataset with a `phantom:` block (the demo's brats2023, isles2015, synthrad2023, or the
# generic phantom) is synthesised in that dataset's layout instead of downloaded, so it goes
# through the real adapter and protocol (dfbk/data/phantom/layouts.py). Give such a config its
# own raw_dir so synthetic and real data never share a folder.
PHANTOM_DATASETS = [
    d for d, spec in config["datasets"].items() if "phantom" in spec or d == "phantom"
]


rule synthesise_phantom:
    output:
        directory(f"{RAW}/{{dataset}}"),
    log:
        f"{RESULTS}/logs/synthesise_phantom/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesise_phantom/{{dataset}}.tsv"
    wildcard_constraints:
        dataset="|".join(PHANTOM_DATASETS) or "(?!)",
    priority: DATA_PRIORITY
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        subjects=phantom_setting("subjects"),
        voxel_mm=phantom_setting("voxel_mm"),
        # Lesion types apply to the generic phantom; a dataset's layout has its own (BraTS:
        # tumour, ISLES: stroke, SynthRAD: none).
        lesions=phantom_lesions_option,
        seed=phantom_setting("seed"),
    shell:
        "dfbk phantom {output:q} --layout {wildcards.dataset} --subjects {params.subjects} "
        "--seed {params.seed} --voxel-mm {params.voxel_mm} {params.lesions} > {log:q} 2>&1"


ruleorder: synthesise_phantom > download_brats2023
ruleorder: synthesise_phantom > download_isles2015
ruleorder: synthesise_phantom > download_synthrad2023


rule download_brats2023:
    output:
        directory(f"{RAW}/brats2023"),
    log:
        f"{RESULTS}/logs/download/brats2023.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/brats2023.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=1440,
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(
            json.dumps(
                lookup("datasets/brats2023/download", within=config, default={}), sort_keys=True
            )
        ),
    shell:
        "dfbk download brats2023 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"


rule download_isles2015:
    output:
        directory(f"{RAW}/isles2015"),
    log:
        f"{RESULTS}/logs/download/isles2015.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/isles2015.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=240,
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(
            json.dumps(
                lookup("datasets/isles2015/download", within=config, default={}), sort_keys=True
            )
        ),
    shell:
        "dfbk download isles2015 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"


rule download_synthrad2023:
    output:
        directory(f"{RAW}/synthrad2023"),
    log:
        f"{RESULTS}/logs/download/synthrad2023.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/synthrad2023.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=720,
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(
            json.dumps(
                lookup("datasets/synthrad2023/download", within=config, default={}), sort_keys=True
            )
        ),
    shell:
        "dfbk download synthrad2023 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"
