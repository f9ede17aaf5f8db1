# external: baselines whose code lives outside the package (methods.<name>.external,
# docs/external.md). Per run, train_external runs the method's own train command (in its conda
# environment or container) into train/{run}/checkpoint/, and record_external_run checks that
# folder and writes run.json and train_log.jsonl beside it; translate_external runs its
# translate command into external/{run}/predictions/ (temporary), and
# collect_external_predictions checks one NIfTI per test subject on the store's grid and
# publishes translate/{run}/. From there evaluate, tables, figures and MLflow treat the method
# like any other. The two check jobs run in the package's environment, so the external one
# needs nothing of this package. Jobs take train.threads/mem_mb/runtime like the built-in
# methods and external.gpus (default train.gpus); benchmarks land where the built-in rules'
# do (benchmarks/train_method/, benchmarks/translate_test_set/), so every run has one.
import re

from dfbk.inference.external import (
    conda_env,
    external_command,
    external_container,
    external_gpus,
    external_methods,
)

EXTERNAL = external_methods(config)
EXTERNAL_METHOD = "|".join(re.escape(name) for name in EXTERNAL) or "(?!)"


# An external method's run.json, predictions and benchmark files come from these rules, not
# from dfbk train or dfbk predict (whose wildcards match any method name).
ruleorder: record_external_run > train_method
ruleorder: train_external > train_method
ruleorder: collect_external_predictions > translate_test_set
ruleorder: translate_external > translate_test_set


rule train_external:
    input:
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        checkpoint=directory(f"{RESULTS}/train/{RUN}/checkpoint"),
    log:
        f"{RESULTS}/logs/train_external/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_method/{RUN}.tsv"
    wildcard_constraints:
        method=EXTERNAL_METHOD,
    conda:
        lambda wc: conda_env(EXTERNAL[wc.method])
    container:
        lambda wc: external_container(config, wc.method)
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=lambda wc: external_gpus(config, wc.method),
    params:
        command=lambda wc, input, output, threads, resources: external_command(
            config, "train", wc, input, output, threads, resources.gpu
        ),
    shell:
        "mkdir -p {output.checkpoint:q} && ( {params.command} ) > {log:q} 2>&1"


rule record_external_run:
    input:
        checkpoint=rules.train_external.output.checkpoint,
    output:
        run=f"{RESULTS}/train/{RUN}/run.json",
        log=f"{RESULTS}/train/{RUN}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/record_external_run/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/record_external_run/{RUN}.tsv"
    wildcard_constraints:
        method=EXTERNAL_METHOD,
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=500,
        runtime=5,
    params:
        out_dir=subpath(output.run, parent=True),
        run=lambda wc: json.dumps(
            {k: wc[k] for k in ("dataset", "direction", "method", "seed")}, sort_keys=True
        ),
        settings=lambda wc: json.dumps(config["methods"][wc.method], sort_keys=True),
    shell:
        "python -m dfbk.inference.external record {input.checkpoint:q} {params.out_dir:q} "
        "--run {params.run:q} --settings {params.settings:q} > {log:q} 2>&1"


rule translate_external:
    input:
        checkpoint=rules.train_external.output.checkpoint,
        run=rules.record_external_run.output.run,  # the checkpoint passed its check
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        predictions=temp(directory(f"{RESULTS}/external/{RUN}/predictions")),
    log:
        f"{RESULTS}/logs/translate_external/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate_test_set/{RUN}.tsv"
    wildcard_constraints:
        method=EXTERNAL_METHOD,
    conda:
        lambda wc: conda_env(EXTERNAL[wc.method])
    container:
        lambda wc: external_container(config, wc.method)
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=240,
        gpu=lambda wc: external_gpus(config, wc.method),
    params:
        command=lambda wc, input, output, threads, resources: external_command(
            config, "translate", wc, input, output, threads, resources.gpu
        ),
    shell:
        "mkdir -p {output.predictions:q} && ( {params.command} ) > {log:q} 2>&1"


rule collect_external_predictions:
    input:
        raw=rules.translate_external.output.predictions,
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        predictions=directory(f"{RESULTS}/translate/{RUN}"),
    log:
        f"{RESULTS}/logs/collect_external_predictions/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect_external_predictions/{RUN}.tsv"
    wildcard_constraints:
        method=EXTERNAL_METHOD,
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m dfbk.inference.external collect {input.raw:q} {input.store:q} {input.split:q} "
        "{output.predictions:q} --method {wildcards.method} --direction {wildcards.direction} "
        "> {log:q} 2>&1"
