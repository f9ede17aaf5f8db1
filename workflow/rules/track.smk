# track: import every finished run into MLflow. One serialised job (resource mlflow_db=1);
# jobs themselves only write JSON/JSONL, so concurrent training never touches the database.


rule track_runs:
    input:
        train=run_paths(f"{RESULTS}/train/{RUN}/run.json"),
        evaluate=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json"),
        figures=all_figures(),
    output:
        imported=f"{RESULTS}/tracking/imported.json",
    params:
        train_dirs=lambda wc, input: " ".join(str(Path(p).parent) for p in input.train),
        eval_dirs=lambda wc, input: " ".join(str(Path(p).parent) for p in input.evaluate),
        figures=" ".join(
            f"--figure {d}:{r}:{RESULTS}/figures/{d}/{r}.png"
            for d, spec in config["datasets"].items()
            for r in spec["directions"]
        ),
        uri=lambda wc: f"--uri {shlex.quote(config['tracking']['uri'])}" if config.get("tracking", {}).get("uri") else "",
        experiment=lookup("tracking/experiment", within=config, default="dfbk-bench"),
        results_dir=lambda wc, output: Path(output.imported).parent.parent,
    log:
        f"{RESULTS}/logs/track_runs.log",
    resources:
        mem_mb=2000,
        runtime=30,
        mlflow_db=1,
    conda:
        "../../environment.yml"
    shell:
        "dfbk track --train-dirs {params.train_dirs} --eval-dirs {params.eval_dirs} "
        "{params.figures} {params.uri} --results-dir {params.results_dir} "
        "--experiment {params.experiment} --out {output.imported} > {log} 2>&1"
