# weights: the pretrained weights a config needs (BiomedCLIP, ResViT's ImageNet-21k ViT,
# pytorch-fid's Inception), fetched once, verified, and placed where each library reads them
# (Hugging Face cache, $TORCH_HOME, weights.dir); `dfbk weights`, docs/cluster.md "Pretrained
# weights". Config: weights.fetch (which sets), weights.dir (ResViT's converted file),
# weights.from_dir (air-gapped: a folder of the files copied by hand instead of the internet).
# Each job writes a receipt under {RESULTS}/weights/ listing the verified files and their
# SHA-256; rules that need a set take its receipt as an input (WEIGHTS_RECEIPT). Downloads need
# the internet, so these jobs run on the submit host.

WEIGHT_SETS = ("biomedclip", "resvit-vit", "inception")


localrules:
    fetch_weights,


# Receipts of the sets listed in weights.fetch: targets for rule all. A rule reading one set
# takes its receipt as an input: WEIGHTS_RECEIPT.format(weights="biomedclip").
WEIGHTS_RECEIPT = f"{RESULTS}/weights/{{weights}}.json"
CONFIGURED_WEIGHTS = [WEIGHTS_RECEIPT.format(weights=name) for name in config["weights"]["fetch"]]


rule fetch_weights:
    output:
        receipt=WEIGHTS_RECEIPT,
    log:
        f"{RESULTS}/logs/fetch_weights/{{weights}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_weights/{{weights}}.tsv"
    wildcard_constraints:
        weights="|".join(WEIGHT_SETS),
    conda:
        "../envs/dfbk.yaml"
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        # resvit-vit goes to weights.dir; weights.from_dir copies instead of downloading
        options=lambda wc: " ".join(
            (
                [
                    f"--dest {shlex.quote(config.get('weights', {}).get('dir', 'resources/weights'))}"
                ]
                if wc.weights == "resvit-vit"
                else []
            )
            + (
                [f"--from-file {shlex.quote(d)}"]
                if (d := config.get("weights", {}).get("from_dir"))
                else []
            )
        ),
    shell:
        "dfbk weights {wildcards.weights} {params.options} --receipt {output.receipt:q} > {log:q} 2>&1"
