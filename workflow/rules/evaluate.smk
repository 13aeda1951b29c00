# Evaluate once: each model x all of its eval splits; logits cached as Parquet, one file per model.
# Metrics, figures and (later) prediction ensembles are computed from these files only.


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        logits=f"results/predictions/{MODEL}/logits.parquet",
        costs=f"results/predictions/{MODEL}/costs.json",
    params:
        splits=eval_split_args,
        model_dir=lambda w, input: os.path.dirname(input.model),
        device=CFG["device"],
        data_root=DATA,
    log:
        f"results/logs/evaluate/{MODEL}.log",
    benchmark:
        f"results/benchmarks/evaluate/{MODEL}.tsv"
    threads: THREADS["evaluate"]
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench evaluate --model {params.model_dir} --split {params.splits} --data-root {params.data_root}"
        " --out {output.logits} --costs {output.costs} --threads {threads} --device {params.device} > {log} 2>&1"


# The classifiers adapted from one pretrained backbone are evaluated in one job: same files as
# rule evaluate, but each eval split (and its corruption) is loaded once for all of them, and the
# per-job start-up (~3.5 s of imports) is paid once. Preferred over rule evaluate where both match.
rule evaluate_adapted:
    input:
        models=adapted("results/models/{{dataset}}/{{backbone}}/{{pretrain}}/{adapt}/none/none/seed{{seed}}/model.safetensors"),
        data=lambda w: [dataset_marker(d) for d in eval_datasets(CFG, w.dataset)],
    output:
        logits=adapted("results/predictions/{{dataset}}/{{backbone}}/{{pretrain}}/{adapt}/none/none/seed{{seed}}/logits.parquet"),
        costs=adapted("results/predictions/{{dataset}}/{{backbone}}/{{pretrain}}/{adapt}/none/none/seed{{seed}}/costs.json"),
    wildcard_constraints:
        pretrain=PRETRAIN_METHODS,
    params:
        splits=eval_split_args,
        model_dirs=lambda w, input: " ".join(os.path.dirname(m) for m in input.models),
        device=CFG["device"],
        data_root=DATA,
    log:
        f"results/logs/evaluate/{PRETRAINED}.adapted.log",
    benchmark:
        f"results/benchmarks/evaluate/{PRETRAINED}.adapted.tsv"
    threads: THREADS["evaluate"]
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench evaluate --model {params.model_dirs} --split {params.splits} --data-root {params.data_root}"
        " --out {output.logits} --costs {output.costs} --threads {threads} --device {params.device} > {log} 2>&1"


ruleorder: evaluate_adapted > evaluate
