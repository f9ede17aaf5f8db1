# dfbk-bench: download -> prepare -> train -> translate -> evaluate -> tables -> MLflow.
# Usage: snakemake --profile profiles/default [--configfile config/paper.yaml]
from snakemake.utils import min_version, validate

min_version("9.20")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/knowledge.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"


rule all:
    input:
        tables=all_tables(),
        figures=all_figures(),
        tracking=f"{RESULTS}/tracking/imported.json",
    default_target: True
