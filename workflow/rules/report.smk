# aggregate: comparison tables and the Figure-3-style panels, both shown in the HTML report.


def plot_inputs(wildcards):
    """Every compared method's predictions and run.json, every seed (figure rows, curves)."""
    base = f"{wildcards.dataset}/{wildcards.direction}"
    runs = [(m, s) for m in compared_methods(wildcards.direction) for s in config["seeds"]]
    return {
        "predictions": [f"{RESULTS}/translate/{base}/{m}/seed-{s}" for m, s in runs],
        "runs": [f"{RESULTS}/train/{base}/{m}/seed-{s}/run.json" for m, s in runs],
    }


def seeded_options(option, wildcards, paths):
    """`--option METHOD@SEED=PATH` for each run, in plot_inputs' order."""
    runs = [(m, s) for m in compared_methods(wildcards.direction) for s in config["seeds"]]
    return " ".join(
        f"{option} {shlex.quote(f'{m}@{s}={path}')}" for (m, s), path in zip(runs, paths)
    )


rule plot_comparison:
    input:
        unpack(plot_inputs),
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        figure=report(
            f"{RESULTS}/figures/{{dataset}}/{{direction}}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "direction": "{direction}", "figure": "examples"},
        ),
        pdf=f"{RESULTS}/figures/{{dataset}}/{{direction}}.pdf",
        curves=report(
            f"{RESULTS}/figures/{{dataset}}/{{direction}}_curves.png",
            caption="../report/curves.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "direction": "{direction}", "figure": "curves"},
        ),
        curves_pdf=f"{RESULTS}/figures/{{dataset}}/{{direction}}_curves.pdf",
    params:
        predictions=lambda wc, input: seeded_options("--prediction", wc, input.predictions),
        runs=lambda wc, input: seeded_options(
            "--run", wc, [os.path.dirname(run) for run in input.runs]
        ),
    log:
        f"{RESULTS}/logs/plot_comparison/{{dataset}}/{{direction}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_comparison/{{dataset}}/{{direction}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/dfbk.yaml"
    shell:
        "(dfbk figure {input.store:q} {input.split:q} {wildcards.direction} {output.figure:q} "
        "{params.predictions} && dfbk curves {output.curves:q} {params.runs} "
        "--title '{wildcards.dataset} {wildcards.direction}') > {log:q} 2>&1"


rule tabulate_comparison:
    input:
        metrics=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json", comparison_runs()),
        runs=run_paths(f"{RESULTS}/train/{RUN}/run.json", comparison_runs()),
    output:
        md=report(f"{RESULTS}/tables/comparison.md", caption="../report/comparison.rst", category="Tables"),
        csv=f"{RESULTS}/tables/comparison.csv",
        tex=f"{RESULTS}/tables/comparison.tex",
    params:
        out_stem=lambda wc, output: output.csv.removesuffix(".csv"),
        caption=TABLE_CAPTION,
    log:
        f"{RESULTS}/logs/tabulate_comparison.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_comparison.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/dfbk.yaml"
    shell:
        "dfbk tables {input.metrics:q} --runs {input.runs:q} --out-stem {params.out_stem:q} "
        "--caption {params.caption:q} > {log:q} 2>&1"


rule tabulate_ablation:
    input:
        metrics=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json", ablation_runs()),
        runs=run_paths(f"{RESULTS}/train/{RUN}/run.json", ablation_runs()),
    output:
        md=report(f"{RESULTS}/tables/ablation.md", caption="../report/ablation.rst", category="Tables"),
        csv=f"{RESULTS}/tables/ablation.csv",
        tex=f"{RESULTS}/tables/ablation.tex",
    params:
        out_stem=lambda wc, output: output.csv.removesuffix(".csv"),
        caption=f"DFBK ablation. {TABLE_CAPTION}",
    log:
        f"{RESULTS}/logs/tabulate_ablation.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_ablation.tsv"
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/dfbk.yaml"
    shell:
        "dfbk tables {input.metrics:q} --runs {input.runs:q} --out-stem {params.out_stem:q} "
        "--caption {params.caption:q} --capacity > {log:q} 2>&1"
