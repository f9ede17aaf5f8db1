# download: raw data into {RAW}/{dataset}/. The phantom is synthesised, not downloaded.


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
        "dfbk phantom {output} --subjects {params.subjects} --seed {params.seed} "
        "--voxel-mm {params.voxel_mm} --lesions {params.lesions} > {log} 2>&1"
