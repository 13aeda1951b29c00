# Evaluate once: each model x all of its eval splits -> cached logits (Parquet), costs and the
# embeddings of a fixed class-balanced test subset, under {R}/predictions/<model-id>/. Metrics,
# figures, t-SNE and (later) prediction ensembles are computed from these files only. Corrupted
# splits come from rule corruptions.
#
# One job evaluates one *group*: every seed of one model id (dlbench.plan.Plan.eval_groups). The
# models of a group differ only in their seed, so a changed recipe changes all of them or none:
# the grouping saves per-job start-up (seconds of torch + timm imports per process) without ever
# re-evaluating a model whose recipe did not change. A group's predictions are one directory.


rule evaluate:
    input:
        models=group_models,
        data=eval_data,
    output:
        directory(f"{R}/predictions/{GROUP}"),
    params:
        jobs=eval_jobs_arg,
        args=eval_args,
        device=DEVICE,
    log:
        f"{R}/logs/evaluate/{GROUP}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{GROUP}.tsv"
    threads: THREADS["evaluate"]
    resources:
        gpu=GPU,
        runtime=evaluate_minutes,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench evaluate {params.jobs} {params.args} --threads {threads} --device {params.device} > {log} 2>&1"


# The frozen-feature variants of one backbone come from one job; they are evaluated in one job too (every
# seed): each split is loaded once for all of them. One rule per FROZEN_SETS entry, like adapt_frozen.
for i, (variants, pretrains) in enumerate(FROZEN_SETS):

    rule:
        name:
            frozen_rule_name("evaluate_frozen", i)
        input:
            models=group_models,
            data=eval_data,
        output:
            frozen_groups(variants),
        wildcard_constraints:
            pretrain=alternation(pretrains),
        params:
            jobs=eval_jobs_arg,
            args=eval_args,
            device=DEVICE,
        log:
            f"{R}/logs/evaluate/{{dataset}}/{{backbone}}/{{pretrain}}.frozen.log",
        benchmark:
            f"{R}/benchmarks/evaluate/{{dataset}}/{{backbone}}/{{pretrain}}.frozen.tsv"
        threads: THREADS["evaluate"]
        resources:
            gpu=GPU,
            runtime=evaluate_minutes,
        conda:
            "../envs/dlbench.yaml"
        shell:
            "dlbench evaluate {params.jobs} {params.args} --threads {threads} --device {params.device} > {log} 2>&1"

    workflow.ruleorder(frozen_rule_name("evaluate_frozen", i), "evaluate")  # `ruleorder:` takes literal names only
