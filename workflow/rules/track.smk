# track: import every finished run into MLflow. One serialised job (resource mlflow_db=1);
# jobs themselves only write JSON/JSONL, so concurrent training never touches the database.
# imported.json records what was imported; it is checked against the store while the DAG is
# built (tracking_flag_checked), so a run deleted or lost in MLflow is imported again.
# What the experiment holds (method groups, seed runs, nested stages, the summary run, system
# metrics from the benchmark TSVs, checkpoints) is described in docs/tracking.md. The files
# the import reads beside run.json and metrics.json (model.pt, benchmark TSVs, earlier stages'
# run.json) are written by the same jobs or by jobs those depend on, so run.json changes
# whenever they do; tables and figures come from other jobs and are inputs here.
rule track_runs:
    input:
        train=run_paths(f"{RESULTS}/train/{RUN}/run.json"),
        evaluate=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json"),
        tables=all_tables(),
        figures=[  # plot_comparison's outputs: examples and loss curves, PNG and PDF
            f"{RESULTS}/figures/{d}/{r}{suffix}"
            for d, spec in config["datasets"].items()
            for r in spec["directions"]
            for suffix in (".png", ".pdf", "_curves.png", "_curves.pdf")
        ],
        store_checked=tracking_flag_checked,
    output:
        imported=TRACKING_FLAG,
    log:
        f"{RESULTS}/logs/track_runs.log",
    benchmark:
        f"{RESULTS}/benchmarks/track_runs.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
        mlflow_db=1,
    params:
        train_dirs=lambda wc, input: [str(Path(p).parent) for p in input.train],
        eval_dirs=lambda wc, input: [str(Path(p).parent) for p in input.evaluate],
        figures=[
            item
            for d, spec in config["datasets"].items()
            for r in spec["directions"]
            for suffix in (".png", ".pdf", "_curves.png", "_curves.pdf")
            for item in ("--figure", f"{d}:{r}:{RESULTS}/figures/{d}/{r}{suffix}")
        ],
        uri=lambda wc: (
            f"--uri {shlex.quote(config['tracking']['uri'])}"
            if config.get("tracking", {}).get("uri")
            else ""
        ),
        experiment=config["tracking"]["experiment"],
        options=lambda wc: " ".join(  # tracking.log_models / register_models (docs/tracking.md)
            ([] if config.get("tracking", {}).get("log_models", True) else ["--no-models"])
            + (["--register-models"] if config.get("tracking", {}).get("register_models") else [])
        ),
        results_dir=lambda wc, output: Path(output.imported).parent.parent,
    shell:
        "dfbk track --train-dirs {params.train_dirs:q} --eval-dirs {params.eval_dirs:q} "
        "{params.figures:q} {params.uri} {params.options} --results-dir {params.results_dir:q} "
        "--experiment {params.experiment:q} --out {output.imported:q} > {log:q} 2>&1"
