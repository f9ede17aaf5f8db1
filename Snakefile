# dfbk-bench: download -> prepare -> train -> translate -> evaluate -> tables -> MLflow.
# Usage: snakemake --profile profiles/default [--configfile config/paper.yaml]
# (a --configfile replaces config/config.yaml instead of being merged into it)
from snakemake.utils import min_version, validate

min_version("9.20")


# A config file given on the command line (--configfile/--configfiles, or a profile's
# `configfile:`) is the whole experiment and REPLACES the embedded demo config; the demo config
# applies only when none is given. `--config key=value` updates whichever config is in force.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


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
