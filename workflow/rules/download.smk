# download: raw data into {RAW}/{dataset}/. The phantom is synthesised, not downloaded.
# Real datasets: archives, partial downloads and the pinned Zenodo record live in
# {downloads_dir}/{dataset}/ (outside the outputs, which Snakemake deletes when a job fails), so
# an interrupted download resumes; a finished {RAW}/{dataset} is an output and never redone.
# These jobs need the internet, so on a cluster they run on the submit host (localrules).
# Each rule passes the dataset's `download:` settings as JSON. BraTS reads its Synapse token from
# $SYNAPSE_AUTH_TOKEN or ~/.synapseConfig, never from config, params or logs.
# What to do by hand per dataset: docs/data.md, "Getting the data".

DOWNLOADS = lookup("downloads_dir", within=config, default="resources/downloads")


localrules:
    download_brats2023,
    download_isles2015,
    download_synthrad2023,


rule synthesise_phantom:
    output:
        directory(f"{RAW}/phantom"),
    params:
        subjects=lookup("datasets/phantom/phantom/subjects", within=config, default=16),
        voxel_mm=lookup("datasets/phantom/phantom/voxel_mm", within=config, default=3.0),
        lesions=",".join(lookup("datasets/phantom/phantom/lesions", within=config, default=["tumour", "stroke", "none"])),
        seed=lookup("datasets/phantom/phantom/seed", within=config, default=0),
    log:
        f"{RESULTS}/logs/synthesise_phantom.log",
    benchmark:
        f"{RESULTS}/benchmarks/synthesise_phantom.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "dfbk phantom {output:q} --subjects {params.subjects} --seed {params.seed} "
        "--voxel-mm {params.voxel_mm} --lesions {params.lesions:q} > {log:q} 2>&1"


rule download_brats2023:
    output:
        directory(f"{RAW}/brats2023"),
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(json.dumps(lookup("datasets/brats2023/download", within=config, default={}), sort_keys=True)),
    log:
        f"{RESULTS}/logs/download/brats2023.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/brats2023.tsv"
    resources:
        mem_mb=2000,
        runtime=1440,
    conda:
        "../../environment.yml"
    shell:
        "dfbk download brats2023 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"


rule download_isles2015:
    output:
        directory(f"{RAW}/isles2015"),
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(json.dumps(lookup("datasets/isles2015/download", within=config, default={}), sort_keys=True)),
    log:
        f"{RESULTS}/logs/download/isles2015.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/isles2015.tsv"
    resources:
        mem_mb=2000,
        runtime=240,
    conda:
        "../../environment.yml"
    shell:
        "dfbk download isles2015 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"


rule download_synthrad2023:
    output:
        directory(f"{RAW}/synthrad2023"),
    params:
        downloads=DOWNLOADS,
        settings=shlex.quote(json.dumps(lookup("datasets/synthrad2023/download", within=config, default={}), sort_keys=True)),
    log:
        f"{RESULTS}/logs/download/synthrad2023.log",
    benchmark:
        f"{RESULTS}/benchmarks/download/synthrad2023.tsv"
    resources:
        mem_mb=2000,
        runtime=720,
    conda:
        "../../environment.yml"
    shell:
        "dfbk download synthrad2023 {output:q} --downloads {params.downloads:q} "
        "--settings {params.settings} > {log:q} 2>&1"
