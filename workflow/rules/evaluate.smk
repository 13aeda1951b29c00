# Evaluate once: each model x all of its eval splits -> cached logits (Parquet), costs and the
# embeddings of a fixed class-balanced test subset. Metrics, figures, t-SNE and (later) prediction
# ensembles are computed from these files only. Corrupted splits come from rule corruptions.


rule evaluate:
    input:
        model=lambda w: model_file(model_id(w)),
        data=eval_data,
    output:
        logits=f"{R}/predictions/{MODEL}/logits.parquet",
        costs=f"{R}/predictions/{MODEL}/costs.json",
        embeddings=f"{R}/predictions/{MODEL}/embeddings.parquet",
    params:
        args=eval_args,
        model=lambda w, input: os.path.dirname(input.model),
        device=DEVICE,
    log:
        f"{R}/logs/evaluate/{MODEL}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{MODEL}.tsv"
    threads: THREADS["evaluate"]
    resources:
        gpu=GPU,
        runtime=lambda w: evaluate_minutes(w),
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench evaluate --model {params.model} {params.args} --out {output.logits} --costs {output.costs}"
        " --embeddings {output.embeddings} --threads {threads} --device {params.device} > {log} 2>&1"


if FROZEN:

    # The frozen-feature variants of one backbone come from one job; they are evaluated in one job
    # too (same files as rule evaluate): each split is loaded once for all of them.
    rule evaluate_frozen:
        input:
            models=frozen_outputs("models", "model.safetensors"),
            data=eval_data,
        output:
            logits=frozen_outputs("predictions", "logits.parquet"),
            costs=frozen_outputs("predictions", "costs.json"),
            embeddings=frozen_outputs("predictions", "embeddings.parquet"),
        wildcard_constraints:
            pretrain=PRETRAIN_VARIANTS,
        params:
            args=eval_args,
            models=lambda w, input: " ".join(os.path.dirname(m) for m in input.models),
            device=DEVICE,
        log:
            f"{R}/logs/evaluate/{PRETRAINED}.frozen.log",
        benchmark:
            f"{R}/benchmarks/evaluate/{PRETRAINED}.frozen.tsv"
        threads: THREADS["evaluate"]
        resources:
            gpu=GPU,
            runtime=lambda w: evaluate_minutes(w, len(FROZEN)),
        conda:
            "../envs/dlbench.yaml"
        shell:
            "dlbench evaluate --model {params.models} {params.args} --out {output.logits} --costs {output.costs}"
            " --embeddings {output.embeddings} --threads {threads} --device {params.device} > {log} 2>&1"

    ruleorder: evaluate_frozen > evaluate
