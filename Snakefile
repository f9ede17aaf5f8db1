# dfbk-bench: download -> prepare -> train -> translate -> evaluate -> tables -> MLflow.
# Usage: snakemake --profile profiles/default [--configfile config/paper.yaml]
# (a --configfile replaces config/config.yaml instead of being merged into it)
import os

from snakemake.utils import min_version

from dfbk.plan.checks import check_method_settings, validate_config

min_version("9.20")


# A config file given on the command line (--configfile/--configfiles, or a profile's
# `configfile:`) is the whole experiment and REPLACES the embedded demo config; the demo config
# applies only when none is given. `--config key=value` updates whichever config is in force.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.current_basedir}/config/config.yaml"


# One line naming the key for a schema violation, and the schema's defaults filled in the same
# pass (what Snakemake's validate(config, schema) does, without its second parse and pass).
validate_config(config, f"{workflow.current_basedir}/workflow/schemas/config.schema.yaml")

# --software-deployment-method apptainer: every rule runs in this image (docs/cluster.md).
# --software-deployment-method conda: workflow/envs/dfbk.yaml installs this repository, found
# through DFBK_BENCH_DIR (this file's folder, also when workflow/Snakefile is the entry point).
os.environ.update(DFBK_BENCH_DIR=str(workflow.current_basedir))


container: config["container"]


# `snakemake --report report.html`: the global description on the report's front page.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/knowledge.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/external.smk"


# After common.smk's name checks: each method's resolved hyperparameters (steps, batch_size,
# slice and patch sizes its network takes). It imports the method modules, so only the main
# process runs it, not each cluster job re-reading this file.
if workflow.is_main_process:
    check_method_settings(config)


rule all:
    default_target: True
    input:
        tables=all_tables(),
        figures=all_figures(),
        tracking=f"{RESULTS}/tracking/imported.json",
        products=all_products(),  # a deleted intermediate reruns what it feeds (common.smk)
        weights=CONFIGURED_WEIGHTS,  # pretrained weights the config fetches (weights.smk)
