# Config validation and target/path helpers. No other Python logic in .smk files: the grid of
# models, their recipes and resources come from the package (dlbench.plan, dlbench.resources).
import json
import posixpath
import re
import shlex

from snakemake.exceptions import WorkflowError

from dlbench.config import ConfigError
from dlbench.dag import eval_job_key, frozen_job_groups, load_state
from dlbench.ids import PATTERN, WILDCARD_CONSTRAINTS, ModelId
from dlbench.plan import group_key
from dlbench.resources import wants_gpu
from dlbench.worker import enable_for_local_jobs

try:
    STATE = load_state(config)  # checked config + plan + runtimes, cached per (config, code): dlbench.dag
except (ConfigError, ValueError) as e:
    raise WorkflowError(f"invalid config: {e}")
CFG, PLAN = STATE.cfg, STATE.plan
FIGURES = STATE.figures  # (section title, figure file) of every figure the report layer draws

R = CFG["results_dir"]
THREADS = CFG["threads"]
DEVICE = CFG["device"]
GPU = 1 if wants_gpu(DEVICE) else 0
EVAL = CFG["evaluate"]

workflow.global_wildcard_constraints(**WILDCARD_CONSTRAINTS)


onstart:
    # local runs: every job's `dlbench` forks from one server that imported torch/timm once (dlbench.worker);
    # not with the SLURM executor (the executor is known only once jobs start). DLBENCH_WORKER=0 turns it off.
    enable_for_local_jobs(workflow)


MODEL = PATTERN
PRETRAINED = "{dataset}/{backbone}/{pretrain}/none/none/none/seed{seed}"
ADAPTED = "{dataset}/{backbone}/{pretrain}/{adapt}/none/none/seed{seed}"
# what one evaluate job evaluates: every seed of one model (see dlbench.plan.Plan.eval_groups)
GROUP = "{dataset}/{backbone}/{pretrain}/{adapt}/{ensemble}/{compress}"


def alternation(names):
    """A wildcard constraint matching exactly these names (never matches when empty)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


PRETRAIN_VARIANTS = alternation(sorted({ModelId.parse(i).pretrain for i in PLAN.ids(stage="pretrain")}))
FROZEN = PLAN.frozen_variants
# (frozen variants, pretrain slots with exactly these): one adapt_frozen / evaluate_frozen rule each (one
# entry unless an adapt variant's `pretrain:` list gives some pretrain variants more frozen variants)
FROZEN_SETS = PLAN.frozen_sets
TRAINED = alternation(PLAN.trained_variants)


def model_id(wildcards, **fixed):
    """The model id of a job from its wildcards (slots a rule's pattern fixes given as keywords)."""
    parts = {k: getattr(wildcards, k) for k in ("dataset", "backbone", "pretrain", "adapt", "ensemble", "compress")
             if k in wildcards.keys()}
    return str(ModelId.from_wildcards({"ensemble": "none", "compress": "none", **parts, **fixed,
                                       "seed": wildcards.seed}))


def recipe_arg(model):
    return shlex.quote(json.dumps(PLAN.recipe(model), sort_keys=True, separators=(",", ":")))


def frozen_ids(wildcards):
    pid = ModelId.parse(model_id(wildcards, adapt="none"))
    return [str(pid.with_(adapt=v)) for v in PLAN.frozen_variants_of(pid.pretrain)]


def frozen_recipes_arg(wildcards):
    return shlex.quote(json.dumps([PLAN.recipe(m) for m in frozen_ids(wildcards)], sort_keys=True,
                                  separators=(",", ":")))


def frozen_rule_name(base, i):
    """Names of the frozen rules of FROZEN_SETS[i]: ``adapt_frozen``, ``adapt_frozen_2``, ..."""
    return base if i == 0 else f"{base}_{i + 1}"


def frozen_outputs(kind, name, variants):
    """One path per frozen variant of the job's backbone: {R}/<kind>/<dataset>/.../<variant>/.../<name>."""
    pattern = f"{R}/{kind}/{{{{dataset}}}}/{{{{backbone}}}}/{{{{pretrain}}}}/{{adapt}}/none/none/seed{{{{seed}}}}/{name}"
    return expand(pattern, adapt=variants)


def frozen_groups(variants):
    """The evaluation-group directories of the frozen variants of one pretrained variant (all seeds)."""
    pattern = f"{R}/predictions/{{{{dataset}}}}/{{{{backbone}}}}/{{{{pretrain}}}}/{{adapt}}/none/none"
    return [directory(p) for p in expand(pattern, adapt=variants)]


def frozen_minutes(wildcards):
    return train_minutes(wildcards, {"adapt": PLAN.frozen_variants_of(wildcards.pretrain)[0]})


def group_dir(group):
    return f"{R}/predictions/{group}"


def wildcard_group(wildcards, **fixed):
    parts = {k: getattr(wildcards, k) for k in ("dataset", "backbone", "pretrain", "adapt", "ensemble", "compress")
             if k in wildcards.keys()}
    parts = {"ensemble": "none", "compress": "none", **parts, **fixed}
    return posixpath.join(*(parts[k] for k in ("dataset", "backbone", "pretrain", "adapt", "ensemble", "compress")))


def job_groups(wildcards):
    """The evaluation groups an evaluate job writes: one, or every frozen variant's of one backbone."""
    if "adapt" in wildcards.keys():
        return [wildcard_group(wildcards)]
    return frozen_job_groups(PLAN, wildcard_group(wildcards, adapt="none"))


def group_models(wildcards):
    return [model_file(m) for g in job_groups(wildcards) for m in PLAN.eval_groups[g]]


def eval_jobs_arg(wildcards):
    """--model/--out/--costs/--embeddings for every model of the job's groups."""
    ids = [m for g in job_groups(wildcards) for m in PLAN.eval_groups[g]]
    files = {k: [prediction_file(m, f) for m in ids]
             for k, f in (("out", "logits.parquet"), ("costs", "costs.json"), ("embeddings", "embeddings.parquet"))}
    args = ["--model", *(os.path.dirname(model_file(m)) for m in ids)]
    for k, paths in files.items():
        args += [f"--{k}", *paths]
    return " ".join(shlex.quote(a) for a in args)


def model_file(model, name="model.safetensors"):
    return f"{R}/models/{model}/{name}"


def prediction_file(model, name):
    return f"{R}/predictions/{model}/{name}"


def dataset_marker(name):
    return f"data/{name}/meta.json"


def corrupted_marker(dataset):
    return f"{R}/corrupted/{dataset}/meta.json"


def eval_data(wildcards):
    files = [dataset_marker(d) for d in PLAN.eval_datasets(wildcards.dataset)]
    return files + ([corrupted_marker(wildcards.dataset)] if PLAN.corruption_splits(wildcards.dataset) else [])


def eval_args(wildcards):
    """The eval-split and embedding arguments of an evaluate job (shared by both evaluate rules)."""
    d = wildcards.dataset
    args = ["--split", *PLAN.eval_split_specs(d), "--corrupted-root", f"{R}/corrupted",
            "--embedding-split", f"{d}:{PLAN.embedding_split(d)}",
            "--embedding-points", str(EVAL.get("embedding_points", 300)),
            "--latency-repeats", str(EVAL.get("latency_repeats", 30))]
    return " ".join(shlex.quote(a) for a in args)


def corruption_args(dataset):
    c = CFG["datasets"][dataset]["corruptions"]
    args = ["--source", c["source"], "--types", *c["types"], "--severities", *map(str, c["severities"])]
    return " ".join(args + (["--max-images", str(c["max_images"])] if c.get("max_images") else []))


def train_minutes(wildcards, fixed):
    return STATE.train_minutes[model_id(wildcards, **fixed)]


def evaluate_minutes(wildcards):
    return STATE.eval_minutes[eval_job_key(job_groups(wildcards))]


def all_targets():
    return [f"{R}/report.html", f"{R}/tables/metrics.parquet", *(f"{R}/figures/{f}" for _, f in FIGURES)]
