# track: import every finished run into MLflow. One serialised job (resource mlflow_db=1);
# jobs themselves only write JSON/JSONL, so concurrent training never touches the database.
# imported.json records what was imported; it is checked against the store while the DAG is
# built (tracking_flag_checked), so a run deleted or lost in MLflow is imported again.
import sys

from dfbk.tracking.store import default_tracking_uri, missing_runs

TRACKING_FLAG = f"{RESULTS}/tracking/imported.json"
TRACKING_REPORTED = []


def tracking_uri():
    """The URI `dfbk track` will use: tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite."""
    return lookup("tracking/uri", within=config, default=None) or default_tracking_uri(RESULTS)


def tracking_flag_checked(wildcards):
    """No input; removes imported.json when the store lacks a run it lists, so the import reruns.

    Snakemake alone only sees that imported.json exists. A SQLite store is read directly
    (milliseconds, no MLflow); a server is not checked (`-R track_runs` re-imports). In a dry
    run nothing is removed; the message says what a real run will do.
    """
    missing = missing_runs(Path(TRACKING_FLAG), tracking_uri())
    if missing and not TRACKING_REPORTED:
        TRACKING_REPORTED.append(len(missing))  # Snakemake may evaluate this more than once
        action = "a run without -n re-imports them" if workflow.dryrun else "re-importing"
        print(
            f"MLflow store {tracking_uri()} lacks {len(missing)} run(s) listed in "
            f"{TRACKING_FLAG} (e.g. {missing[0]}); {action}",
            file=sys.stderr,
        )
        if not workflow.dryrun:
            Path(TRACKING_FLAG).unlink(missing_ok=True)
    return []


rule track_runs:
    input:
        train=run_paths(f"{RESULTS}/train/{RUN}/run.json"),
        evaluate=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json"),
        figures=all_figures(),
        store_checked=tracking_flag_checked,
    output:
        imported=TRACKING_FLAG,
    params:
        train_dirs=lambda wc, input: [str(Path(p).parent) for p in input.train],
        eval_dirs=lambda wc, input: [str(Path(p).parent) for p in input.evaluate],
        figures=[
            item
            for d, spec in config["datasets"].items()
            for r in spec["directions"]
            for item in ("--figure", f"{d}:{r}:{RESULTS}/figures/{d}/{r}.png")
        ],
        uri=lambda wc: (
            f"--uri {shlex.quote(config['tracking']['uri'])}"
            if config.get("tracking", {}).get("uri")
            else ""
        ),
        experiment=lookup("tracking/experiment", within=config, default="dfbk-bench"),
        results_dir=lambda wc, output: Path(output.imported).parent.parent,
    log:
        f"{RESULTS}/logs/track_runs.log",
    resources:
        mem_mb=2000,
        runtime=30,
        mlflow_db=1,
    conda:
        "../envs/dfbk.yaml"
    shell:
        "dfbk track --train-dirs {params.train_dirs:q} --eval-dirs {params.eval_dirs:q} "
        "{params.figures:q} {params.uri} --results-dir {params.results_dir:q} "
        "--experiment {params.experiment:q} --out {output.imported:q} > {log:q} 2>&1"
