# segment: the downstream segmentation check (as BraSyn scores synthesis). A small U-Net is
# trained once per dataset and target modality on the real target slices of the training split,
# then applied to every method's translations of the test split and to the real targets (the
# ceiling); Dice per label and test subject lands in results/evaluate/{run}/dice.csv, beside the
# run's metrics, where the comparison and ablation tables read it (report.smk), so `all` runs
# it. results/tables/segmentation.{md,csv} (target `segmentation`) holds the Dice alone. The
# datasets with challenge labels take part (BraTS tumour sub-regions, ISLES lesion; their
# phantoms in the demo too); SynthRAD has none. The generic `phantom` dataset is left out: it
# serves the workflow's end-to-end tests, whose time budget a segmenter would take. Cost on the
# demo's stores (4 training subjects, 128 x 128, one core): training 200 steps and scoring the
# real test targets once (the ceiling, kept in the segmenter file) about 40 s of CPU per
# dataset; scoring one run's translations about 8 s.

SEGMENTED = ("brats2023", "isles2015")
SEGMENTER_STEPS = 200


rule train_segmenter:
    input:
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        model=f"{RESULTS}/segment/{{dataset}}/segmenter-{{target}}.pt",
    log:
        f"{RESULTS}/logs/train_segmenter/{{dataset}}/{{target}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_segmenter/{{dataset}}/{{target}}.tsv"
    conda:
        "../envs/dfbk.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        steps=SEGMENTER_STEPS,
    shell:
        "python -m dfbk.evaluation.segmentation train {input.store:q} {input.split:q} "
        "{wildcards.target} --out {output.model:q} --steps {params.steps} > {log:q} 2>&1"


rule score_segmentation:
    input:
        model=lambda wc: f"{RESULTS}/segment/{wc.dataset}/segmenter-{wc.direction.split('-to-')[1]}.pt",
        predictions=rules.translate_test_set.output.predictions,
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        dice=f"{RESULTS}/evaluate/{RUN}/dice.csv",
    log:
        f"{RESULTS}/logs/score_segmentation/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/score_segmentation/{RUN}.tsv"
    conda:
        "../envs/dfbk.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        target=lambda wc: wc.direction.split("-to-")[1],
    shell:
        "python -m dfbk.evaluation.segmentation score {input.store:q} {input.split:q} "
        "{params.target} --model {input.model:q} --pred {input.predictions:q} "
        "--out {output.dice:q} > {log:q} 2>&1"


rule tabulate_segmentation:
    input:
        dice=segmentation_dice_files(),
    output:
        md=f"{RESULTS}/tables/segmentation.md",
        csv=f"{RESULTS}/tables/segmentation.csv",
    log:
        f"{RESULTS}/logs/tabulate_segmentation.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_segmentation.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out_stem=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "python -m dfbk.evaluation.segmentation table {input.dice:q} "
        "--out-stem {params.out_stem:q} > {log:q} 2>&1"


rule segmentation:
    input:
        rules.tabulate_segmentation.output.md,
