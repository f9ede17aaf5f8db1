# prepare: raw volumes -> slice store, then the subject split (written once, protected).


rule prepare_slices:
    input:
        raw=f"{RAW}/{{dataset}}",
    output:
        store=directory(f"{RESULTS}/prepare/{{dataset}}/store"),
    log:
        f"{RESULTS}/logs/prepare_slices/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prepare_slices/{{dataset}}.tsv"
    priority: DATA_PRIORITY
    conda:
        "../envs/dfbk.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        modalities=dataset_modalities,
        size=lambda wc: " ".join(map(str, config["datasets"][wc.dataset]["size"])),
        min_foreground=lambda wc: config["datasets"][wc.dataset]["min_foreground"],
        on_bad_case=lambda wc: config["datasets"][wc.dataset]["on_bad_case"],
        skipped=f"{RESULTS}/prepare/{{dataset}}/skipped.csv",
        layout=lambda wc: (  # a dataset of your own: its files as YAML (docs/data.md)
            f"--layout {shlex.quote(json.dumps(spec, sort_keys=True))}"
            if (spec := lookup(f"datasets/{wc.dataset}/layout", within=config, default=None))
            else ""
        ),
    shell:
        "dfbk prepare {wildcards.dataset} {input.raw:q} {output.store:q} "
        "--modalities {params.modalities} --size {params.size} "
        "--min-foreground {params.min_foreground} --on-bad-case {params.on_bad_case} "
        "--skipped-csv {params.skipped:q} --jobs {threads} {params.layout} > {log:q} 2>&1"


rule split_subjects:
    input:
        # str(): ancient() flags the object it is given, and rules.prepare_slices.output.store is
        # the one object every rule shares; flagging it would make every consumer ignore a
        # rebuilt store. The split only depends on which subjects exist (it is checked, not
        # redrawn, by `dfbk split`), so a rebuilt store does not redo it.
        store=ancient(str(rules.prepare_slices.output.store)),
    output:
        split=protected(f"{RESULTS}/prepare/{{dataset}}/splits.json"),
    log:
        f"{RESULTS}/logs/split_subjects/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/split_subjects/{{dataset}}.tsv"
    priority: DATA_PRIORITY
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        seed=lambda wc: config["datasets"][wc.dataset]["split"]["seed"],
        fractions=lambda wc: " ".join(
            map(
                str,
                config["datasets"][wc.dataset]["split"]["fractions"],
            )
        ),
    shell:
        "dfbk split {input.store:q} --out {output.split:q} --seed {params.seed} "
        "--fractions {params.fractions} > {log:q} 2>&1"
