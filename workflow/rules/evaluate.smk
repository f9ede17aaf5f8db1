# evaluate: per-slice and per-subject PSNR, SSIM, MAE, HFEN, GMSD (full, foreground, lesion)
# of one run, plus the challenge's own volume scores (official_*) on BraTS, ISLES, SynthRAD CT.


rule evaluate_predictions:
    input:
        predictions=rules.translate_test_set.output.predictions,
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
        weights=weights_for_evaluation,
    output:
        metrics=f"{RESULTS}/evaluate/{RUN}/metrics.json",
        subjects=f"{RESULTS}/evaluate/{RUN}/subjects.csv",
        slices=f"{RESULTS}/evaluate/{RUN}/slices.csv",
    log:
        f"{RESULTS}/logs/evaluate_predictions/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_predictions/{RUN}.tsv"
    conda:
        "../envs/dfbk.yaml"
    resources:
        # a 256x256x140 subject peaks at 1.2 GB; BraSyn's 3-D SSIM maps take ~10-50 s each
        mem_mb=4000,
        runtime=240,
    params:
        out_dir=subpath(output.metrics, parent=True),
    shell:
        "dfbk evaluate {input.store:q} {input.predictions:q} {input.split:q} {wildcards.direction} "
        "{params.out_dir:q} --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} > {log:q} 2>&1"
