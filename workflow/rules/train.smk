# train: one job per dataset x direction x method x seed; translate: the test split.
# The resumable training state lives in checkpoints/, outside the rule outputs, so a failed or
# preempted job resumes instead of restarting. Each job validates on fixed validation slices and
# writes best.pt beside model.pt; model.pt is the last step unless train/evaluate_checkpoint
# says best (the same rule for every method; run.json records which).
# train.gpus > 1: `dfbk train --gpus N` runs N data-parallel ranks under torchrun on the job's
# node (the preset's batch split between them; docs/training.md).


rule train_method:
    input:
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
        init=previous_stage_model,
        knowledge=knowledge_cache,
        code=method_code,  # a baseline module outside the package: editing it retrains
        weights=weights_for_training,
    output:
        model=f"{RESULTS}/train/{RUN}/model.pt",
        best=f"{RESULTS}/train/{RUN}/best.pt",
        run=f"{RESULTS}/train/{RUN}/run.json",
        log=f"{RESULTS}/train/{RUN}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/train_method/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_method/{RUN}.tsv"
    priority: sampler_priority
    conda:
        "../envs/dfbk.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        gpu=method_gpus,
    params:
        out_dir=subpath(output.model, parent=True),
        checkpoint_dir=f"{RESULTS}/checkpoints/{RUN}",
        stage="",  # train_method_stage: --stage NAME
        preset=lambda wc: method_setting(wc, "preset", "tiny"),
        overrides=method_overrides,
        module=method_module_option,
        init=init_from_option,
        device=config["train"]["device"],
        every=config["train"]["checkpoint_every"],
        val_every=(  # no wildcard: computed once, not per job
            "" if (n := config.get("train", {}).get("val_every")) is None else f"--val-every {n}"
        ),
        evaluate=config["train"]["evaluate_checkpoint"],
        val_slices=config["train"]["val_slices"],
        speed=json.dumps(config.get("train", {}).get("speed", {})),
    shell:
        "dfbk train {wildcards.dataset} {wildcards.direction} {wildcards.method} "
        "{params.stage} {params.init} "
        "--seed {wildcards.seed} --preset {params.preset:q} --overrides {params.overrides} "
        "{params.module} --store {input.store:q} --split {input.split:q} --out-dir {params.out_dir:q} "
        "--checkpoint-dir {params.checkpoint_dir:q} --checkpoint-every {params.every} "
        "--knowledge {input.knowledge:q} --device {params.device:q} --threads {threads} "
        "--gpus {resources.gpu} --speed {params.speed:q} "
        "{params.val_every} --val-slices {params.val_slices} --evaluate {params.evaluate} "
        "> {log:q} 2>&1"


# A method's extra training stage (e.g. ResViT's pretraining): the same job in its own folder.
use rule train_method as train_method_stage with:
    output:
        model=f"{RESULTS}/train/{RUN}/stage-{{stage}}/model.pt",
        best=f"{RESULTS}/train/{RUN}/stage-{{stage}}/best.pt",
        run=f"{RESULTS}/train/{RUN}/stage-{{stage}}/run.json",
        log=f"{RESULTS}/train/{RUN}/stage-{{stage}}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/train_method_stage/{RUN}/{{stage}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train_method_stage/{RUN}/{{stage}}.tsv"
    params:
        checkpoint_dir=f"{RESULTS}/checkpoints/{RUN}/stage-{{stage}}",
        stage=lambda wc: f"--stage {wc.stage}",


rule translate_test_set:
    input:
        model=rules.train_method.output.model,
        store=rules.prepare_slices.output.store,
        split=rules.split_subjects.output.split,
    output:
        predictions=directory(f"{RESULTS}/translate/{RUN}"),
    log:
        f"{RESULTS}/logs/translate_test_set/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/translate_test_set/{RUN}.tsv"
    priority: sampler_priority
    conda:
        "../envs/dfbk.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=config["train"]["mem_mb"],
        runtime=240,
        gpu=method_gpus,
    params:
        batch_size=config["translate"]["batch_size"],
        tiling=config["translate"]["tiling"],
        device=config["train"]["device"],
    shell:
        "dfbk predict {input.model:q} {input.store:q} {input.split:q} {output.predictions:q} "
        "--batch-size {params.batch_size} --tiling {params.tiling} --device {params.device:q} "
        "--threads {threads} > {log:q} 2>&1"
