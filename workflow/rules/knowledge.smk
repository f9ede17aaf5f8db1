# knowledge: the target modality's prompts encoded once by a frozen text encoder into token
# states with their padding mask (docs/method.md §4). Config: knowledge.encoder
# (auto|biomedclip|minilm|none), knowledge.biomedclip_dir (folder with the BiomedCLIP hub files,
# or null for the Hugging Face cache), knowledge.prompts.<modality> (list of sentences; replaces
# the defaults of dfbk.knowledge.DEFAULT_PROMPTS). `format_version` and `effective_prompts` are
# params so that a new cache format or new default prompts rerun the rule (Snakemake's params
# rerun trigger); the command itself also refuses and rebuilds an older file.
import shlex

from dfbk.knowledge.prompts import DEFAULT_PROMPTS, KNOWLEDGE_FORMAT_VERSION


rule encode_knowledge:
    input:
        weights=weights_for_knowledge,
    output:
        knowledge=f"{RESULTS}/knowledge/{{dataset}}/{{target}}.pt",
    log:
        f"{RESULTS}/logs/encode_knowledge/{{dataset}}/{{target}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/encode_knowledge/{{dataset}}/{{target}}.tsv"
    wildcard_constraints:
        target=r"[a-z0-9]+",
    priority: DATA_PRIORITY
    conda:
        "../envs/dfbk.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        encoder=config["knowledge"]["encoder"],
        biomedclip_dir=lambda wc: (
            f"--biomedclip-dir {shlex.quote(str(folder))}"
            if (folder := config["knowledge"]["biomedclip_dir"])
            else ""
        ),
        format_version=KNOWLEDGE_FORMAT_VERSION,
        effective_prompts=lambda wc: list(
            lookup(f"knowledge/prompts/{wc.target}", within=config, default=None)
            or DEFAULT_PROMPTS.get(wc.target, [])
        ),
        prompts=lambda wc: " ".join(
            f"--prompt {shlex.quote(str(text))}"
            for text in lookup(f"knowledge/prompts/{wc.target}", within=config, default=None) or []
        ),
    shell:
        "dfbk knowledge {wildcards.target} --out {output.knowledge:q} --encoder {params.encoder:q} "
        "{params.biomedclip_dir} {params.prompts} --threads {threads} > {log:q} 2>&1"
