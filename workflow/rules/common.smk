# Shared definitions: paths, wildcard constraints, config checks and the list of jobs.
import importlib.util
import json
from pathlib import Path
import shlex
import sys

from dfbk.plan import grid as run_grid
from dfbk.plan.checks import check_config, method_modules
from dfbk.plan.schema import default as schema_default
from dfbk.methods.catalog import method_info
from dfbk.methods.registry import CPU_ONLY_METHODS, method_stages
from dfbk.tracking.store import default_tracking_uri, missing_runs

RESULTS = config["results_dir"]
RAW = config["raw_dir"]
check_config(config)


wildcard_constraints:
    dataset=r"[a-z0-9]+",
    direction=r"[a-z0-9]+-to-[a-z0-9]+",
    method=r"[a-z0-9_\-]+",
    seed=r"\d+",
    stage=r"[a-z0-9_]+",


RUN = "{dataset}/{direction}/{method}/seed-{seed}"


# The run grid is defined once, in dfbk/plan/grid.py (dfbk status reads it too); bound here.
def all_method_settings():
    return run_grid.all_method_settings(config)


def ablation_directions():
    return run_grid.ablation_directions(config)


def ablation_methods():
    return run_grid.ablation_methods(config)


def compared_methods(direction):
    return run_grid.compared_methods(config, direction)


def comparison_runs():
    return run_grid.comparison_runs(config)


def ablation_runs():
    return run_grid.ablation_runs(config)


def runs():
    return run_grid.runs(config)


# Data jobs (phantom, prepare, split, knowledge) unlock every training: ahead of all of them.
DATA_PRIORITY = 2


def sampler_priority(wildcards):
    """Scheduling priority of a run's training and translation jobs: 1 for iterative samplers
    (a built-in method whose resolved hyperparameters have num_steps > 1: ResShift, DFBK and its
    ablations, SynDiff), else 0. Their training and test-set translation are the longest chains
    of the DAG; started late, one of them ends the workflow with the other cores idle (demo on
    2 cores: DFBK's training, translation and scoring ran 229 s alone at the end). Started
    first, the short GAN jobs fill the cores around them. Only the order of ready jobs changes."""
    settings = all_method_settings()[wildcards.method]
    if settings.get("external") is not None or wildcards.method in method_modules(config):
        return 0
    hparams = method_info(wildcards.method).resolve_hparams(
        settings.get("preset", "tiny"), settings.get("overrides") or {}, budget=False
    )
    return int(int(hparams.get("num_steps") or 1) > 1)


def run_paths(pattern, selection=None):
    return [pattern.format(**run) for run in (runs() if selection is None else selection)]


def all_figures():
    return [
        f"{RESULTS}/figures/{d}/{r}.png"
        for d, spec in config["datasets"].items()
        for r in spec["directions"]
    ]


def dataset_modalities(wildcards):
    """Modalities the dataset's directions use, in first-use order."""
    seen = []
    for direction in config["datasets"][wildcards.dataset]["directions"]:
        for modality in direction.split("-to-"):
            if modality not in seen:
                seen.append(modality)
    return ",".join(seen)


def method_setting(wildcards, key, default=None):
    return all_method_settings()[wildcards.method].get(key, default)


def method_overrides(wildcards):
    return shlex.quote(json.dumps(method_setting(wildcards, "overrides", {}), sort_keys=True))


def method_module_option(wildcards):
    import_path = method_modules(config).get(wildcards.method)
    return f"--module {shlex.quote(import_path)}" if import_path else ""


def stages_of(method):
    return method_stages(method, all_method_settings()[method].get("stages"))


def previous_stage_model(wildcards):
    """model.pt of the stage before this one (for the main training: the last extra stage)."""
    stages = stages_of(wildcards.method)
    current = getattr(wildcards, "stage", None)
    position = stages.index(current) if current is not None else len(stages)
    if position == 0:
        return []
    run = RUN.format(**{k: wildcards[k] for k in ("dataset", "direction", "method", "seed")})
    return [f"{RESULTS}/train/{run}/stage-{stages[position - 1]}/model.pt"]


def method_code(wildcards):
    """Source file of a method declared with `module` (outside the package); [] otherwise.

    Such a file is the user's baseline, edited between runs, so editing it retrains that method
    (and what follows). The package's own methods are one installed version for the whole grid
    and are not listed.
    """
    import_path = method_modules(config).get(wildcards.method)
    spec = importlib.util.find_spec(import_path) if import_path else None  # not executed
    if spec is None or not spec.has_location:
        return []
    origin = Path(spec.origin).resolve()
    here = Path.cwd().resolve()  # relative inside the working directory: a moved tree stays valid
    return [str(origin.relative_to(here) if origin.is_relative_to(here) else origin)]


def init_from_option(wildcards, input):
    return f"--init-from {shlex.quote(str(input.init[0]))}" if input.init else ""


def knowledge_cache(wildcards):
    """The target modality's knowledge embedding (used by Knowledge Guidance methods only)."""
    target = wildcards.direction.split("-to-")[1]
    return f"{RESULTS}/knowledge/{wildcards.dataset}/{target}.pt"


TABLE_CAPTION = (
    "Test-set mean ± std over subjects (seeds averaged per subject first); "
    "each dataset's evaluation protocol follows."
)


def all_tables():
    tables = expand(f"{RESULTS}/tables/comparison.{{ext}}", ext=("md", "csv", "tex"))
    if ablation_runs():
        tables += expand(f"{RESULTS}/tables/ablation.{{ext}}", ext=("md", "csv", "tex"))
    return tables


def all_products():
    """Every intermediate product the final outputs are made from, named in rule all.

    Snakemake only reruns a job whose output is missing when some job downstream must run too,
    so deleting raw data, a slice store or a run's train folder would otherwise leave the old
    tables standing ("Nothing to be done"). Listing them as targets makes a missing product
    rerun its producer and, through its newer output, everything downstream of it. The list is
    read from the rules' own outputs, so it follows them. The checkpoints folder is not listed:
    it is resumable training state, not a product; a finished run's model.pt is what
    translation, evaluation and the tables are made from. Call after every rule is defined.
    """
    per_dataset = [rules.prepare_slices.input.raw, *rules.prepare_slices.output]
    per_dataset += list(rules.split_subjects.output)
    per_run = [*rules.train_method.output, *rules.translate_test_set.output]
    per_run += list(rules.evaluate_predictions.output)
    # an external method (external.smk): its checkpoint folder, run.json and log, predictions
    per_external = [*rules.train_external.output, *rules.record_external_run.output]
    per_external += [*rules.collect_external_predictions.output, *rules.evaluate_predictions.output]
    products = []
    for run in runs():
        target = run["direction"].split("-to-")[1]
        products += [str(p).format(**run) for p in per_dataset]
        if run["dataset"] in SEGMENTED:  # the segmenter that scores this run (segment.smk)
            products += [str(p).format(**run, target=target) for p in rules.train_segmenter.output]
        if run["method"] in EXTERNAL:
            products += [str(p).format(**run) for p in per_external]
            continue
        products += [str(p).format(**run, target=target) for p in rules.encode_knowledge.output]
        for stage in stages_of(run["method"]):
            products += [str(p).format(**run, stage=stage) for p in rules.train_method_stage.output]
        products += [str(p).format(**run) for p in per_run]
    return list(dict.fromkeys(products))


def method_gpus(wildcards):
    """GPUs per train/translate job: train.gpus, or none for methods without a network."""
    if wildcards.method in CPU_ONLY_METHODS:
        return 0
    # a plain dict read: Snakemake's lookup() costs ~2 ms a call, 372 calls per paper dry run
    return config.get("train", {}).get("gpus", 1)


# track.smk: imported.json is checked against the MLflow store while the DAG is built.
TRACKING_FLAG = f"{RESULTS}/tracking/imported.json"
TRACKING_REPORTED = []


def tracking_uri():
    """The URI `dfbk track` will use: tracking.uri, else $MLFLOW_TRACKING_URI, else SQLite."""
    return lookup("tracking/uri", within=config, default=None) or default_tracking_uri(RESULTS)


def tracking_flag_checked(wildcards):
    """No input; removes imported.json when the store lacks a run it lists, so the import reruns.

    Snakemake alone only sees that imported.json exists. A SQLite store is read directly
    (milliseconds, no MLflow); a server is not checked (`-R track_runs` re-imports). In a dry
    run nothing is removed; the message says what a real run will do.
    """
    missing = missing_runs(Path(TRACKING_FLAG), tracking_uri())
    if missing and not TRACKING_REPORTED:
        TRACKING_REPORTED.append(len(missing))  # Snakemake may evaluate this more than once
        action = "a run without -n re-imports them" if workflow.dryrun else "re-importing"
        print(
            f"MLflow store {tracking_uri()} lacks {len(missing)} run(s) listed in "
            f"{TRACKING_FLAG} (e.g. {missing[0]}); {action}",
            file=sys.stderr,
        )
        if not workflow.dryrun:
            Path(TRACKING_FLAG).unlink(missing_ok=True)
    return []


# download.smk: settings of a synthesised (phantom) dataset.
def phantom_setting(key):
    """A `phantom:` block's setting; the schema's default where the block leaves it out."""
    return lambda wc: (config["datasets"][wc.dataset].get("phantom") or {}).get(
        key, schema_default(f"datasets.*.phantom.{key}")
    )


def phantom_lesions_option(wildcards):
    """--lesions for the generic phantom; a dataset's layout has its own lesion types."""
    if wildcards.dataset != "phantom":
        return ""
    return f"--lesions {shlex.quote(','.join(phantom_setting('lesions')(wildcards)))}"


# segment.smk: runs with labels to score, and their Dice files (SEGMENTED is defined there).
def segmentation_runs(selection=None):
    return [r for r in (runs() if selection is None else selection) if r["dataset"] in SEGMENTED]


def segmentation_dice_files(selection=None):
    """dice.csv of each run (of `selection`, default all) whose dataset has labels."""
    return [f"{RESULTS}/evaluate/{RUN.format(**r)}/dice.csv" for r in segmentation_runs(selection)]


def weights_for_training(wildcards):
    """Receipt of ResViT's pretrained ViT when a run's overrides name `vit_weights`: the run
    waits for the verified file (rule fetch_weights) instead of failing on a missing path."""
    overrides = method_setting(wildcards, "overrides", {}) or {}
    return [WEIGHTS_RECEIPT.format(weights="resvit-vit")] if overrides.get("vit_weights") else []


def weights_for_knowledge(wildcards):
    """Receipt of BiomedCLIP when the config asks for that encoder (not for `auto`, which
    falls back to MiniLM and records why)."""
    if config.get("knowledge", {}).get("encoder") == "biomedclip":
        return [WEIGHTS_RECEIPT.format(weights="biomedclip")]
    return []


def weights_for_evaluation(wildcards):
    """Inception's receipt when the config fetches it, so FID is computed for every run or none
    (an evaluation that ran before the download would silently lack FID)."""
    if "inception" in config.get("weights", {}).get("fetch", []):
        return [WEIGHTS_RECEIPT.format(weights="inception")]
    return []
