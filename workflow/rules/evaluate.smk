# Evaluate once: each model x all of its eval splits, one job; logits cached as Parquet.
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
