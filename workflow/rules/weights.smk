# weights: the pretrained weights a config needs (BiomedCLIP, ResViT's ImageNet-21k ViT,
# pytorch-fid's Inception), fetched once, verified, and placed where each library reads them
# (Hugging Face cache, $TORCH_HOME, weights.dir); `dfbk weights`, docs/cluster.md "Pretrained
# weights". Config: weights.fetch (which sets), weights.dir (ResViT's converted file),
# weights.from_dir (air-gapped: a folder of the files copied by hand instead of the internet).
# Each job writes a receipt under {RESULTS}/weights/ listing the verified files and their
# SHA-256; rules that need a set take its receipt as an input (weights_receipt). Downloads need
# the internet, so these jobs run on the submit host.

WEIGHT_SETS = ("biomedclip", "resvit-vit", "inception")


localrules:
    fetch_weights,


def weights_receipt(name):
    """Receipt of weight set `name`; an input of every rule that reads those weights."""
    return f"{RESULTS}/weights/{name}.json"


def configured_weights():
    """Receipts of the sets listed in weights.fetch (targets of rule all)."""
    return [weights_receipt(name) for name in lookup("weights/fetch", within=config, default=[])]


def weights_options(wildcards):
    options = []
    if wildcards.weights == "resvit-vit":
        options.append(f"--dest {shlex.quote(lookup('weights/dir', within=config, default='resources/weights'))}")
    if from_dir := lookup("weights/from_dir", within=config, default=None):
        options.append(f"--from-file {shlex.quote(from_dir)}")
    return " ".join(options)


rule fetch_weights:
    output:
        receipt=f"{RESULTS}/weights/{{weights}}.json",
    wildcard_constraints:
        weights="|".join(WEIGHT_SETS),
    params:
        options=weights_options,
    log:
        f"{RESULTS}/logs/fetch_weights/{{weights}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch_weights/{{weights}}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/dfbk.yaml"
    shell:
        "dfbk weights {wildcards.weights} {params.options} --receipt {output.receipt:q} > {log:q} 2>&1"
