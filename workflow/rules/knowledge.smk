# knowledge: the target modality's prompts encoded once by a frozen text encoder (METHOD.md §4).
# Config: knowledge.encoder (auto|biomedclip|minilm|none), knowledge.biomedclip_dir (folder
# with the BiomedCLIP hub files, or null for the Hugging Face cache), knowledge.prompts.<modality>
# (list of sentences; replaces the defaults of dfbk.knowledge.DEFAULT_PROMPTS).
import shlex


rule encode_knowledge:
    output:
        knowledge=f"{RESULTS}/knowledge/{{dataset}}/{{target}}.pt",
    params:
        encoder=lookup("knowledge/encoder", within=config, default="auto"),
        biomedclip_dir=lambda wc: (
            f"--biomedclip-dir {shlex.quote(str(folder))}"
            if (folder := lookup("knowledge/biomedclip_dir", within=config, default=None))
            else ""
        ),
        prompts=lambda wc: " ".join(
            f"--prompt {shlex.quote(str(text))}"
            for text in lookup(f"knowledge/prompts/{wc.target}", within=config, default=None) or []
        ),
    wildcard_constraints:
        target=r"[a-z0-9]+",
    log:
        f"{RESULTS}/logs/encode_knowledge/{{dataset}}/{{target}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../../environment.yml"
    shell:
        "dfbk knowledge {wildcards.target} --out {output.knowledge:q} --encoder {params.encoder:q} "
        "{params.biomedclip_dir} {params.prompts} --threads {threads} > {log:q} 2>&1"
