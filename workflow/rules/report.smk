# aggregate: comparison tables and the Figure-3-style panels, both shown in the HTML report.


rule plot_comparison:
    input:
        # every compared method and seed: figure rows (predictions) and curves (run folders)
        predictions=lambda wc: [
            f"{RESULTS}/translate/{wc.dataset}/{wc.direction}/{m}/seed-{s}"
            for m in compared_methods(wc.direction)
            for s in config["seeds"]
        ],
        runs=lambda wc: [
            f"{RESULTS}/train/{wc.dataset}/{wc.direction}/{m}/seed-{s}/run.json"
            for m in compared_methods(wc.direction)
            for s in config["seeds"]
        ],
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
    log:
        f"{RESULTS}/logs/plot_comparison/{{dataset}}/{{direction}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_comparison/{{dataset}}/{{direction}}.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        predictions=lambda wc, input: " ".join(
            f"--prediction {shlex.quote(p)}" for p in input.predictions
        ),
        runs=lambda wc, input: " ".join(
            f"--run {shlex.quote(os.path.dirname(p))}" for p in input.runs
        ),
    shell:
        "(dfbk figure {input.store:q} {input.split:q} {wildcards.direction} {output.figure:q} "
        "{params.predictions} && dfbk curves {output.curves:q} {params.runs} "
        "--title '{wildcards.dataset} {wildcards.direction}') > {log:q} 2>&1"


rule tabulate_comparison:
    input:
        metrics=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json", comparison_runs()),
        runs=run_paths(f"{RESULTS}/train/{RUN}/run.json", comparison_runs()),
        # read beside metrics.json by `dfbk tables` (segment.smk; datasets with labels only)
        dice=segmentation_dice_files(comparison_runs()),
    output:
        md=report(
            f"{RESULTS}/tables/comparison.md",
            caption="../report/comparison.rst",
            category="Tables",
        ),
        csv=f"{RESULTS}/tables/comparison.csv",
        tex=f"{RESULTS}/tables/comparison.tex",
    log:
        f"{RESULTS}/logs/tabulate_comparison.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_comparison.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_stem=lambda wc, output: output.csv.removesuffix(".csv"),
        caption=TABLE_CAPTION,
    shell:
        "dfbk tables {input.metrics:q} --runs {input.runs:q} --out-stem {params.out_stem:q} "
        "--caption {params.caption:q} > {log:q} 2>&1"


rule tabulate_ablation:
    input:
        metrics=run_paths(f"{RESULTS}/evaluate/{RUN}/metrics.json", ablation_runs()),
        runs=run_paths(f"{RESULTS}/train/{RUN}/run.json", ablation_runs()),
        dice=segmentation_dice_files(ablation_runs()),
    output:
        md=report(
            f"{RESULTS}/tables/ablation.md", caption="../report/ablation.rst", category="Tables"
        ),
        csv=f"{RESULTS}/tables/ablation.csv",
        tex=f"{RESULTS}/tables/ablation.tex",
    log:
        f"{RESULTS}/logs/tabulate_ablation.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_ablation.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_stem=lambda wc, output: output.csv.removesuffix(".csv"),
        caption=f"DFBK ablation. {TABLE_CAPTION}",
    shell:
        "dfbk tables {input.metrics:q} --runs {input.runs:q} --out-stem {params.out_stem:q} "
        "--caption {params.caption:q} --capacity > {log:q} 2>&1"
