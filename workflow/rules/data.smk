# Data layer: DVC owns the bytes. Each dataset is pulled from the DVC remote, or built with
# `dvc repro` and pushed when the remote does not have it yet. DVC takes a repo-wide lock,
# so these jobs are serialized through the `dvc` resource (limit 1 in the profiles).


rule dataset:
    output:
        "data/{name}/meta.json",
    log:
        f"{R}/logs/dataset/{{name}}.log",
    benchmark:
        f"{R}/benchmarks/dataset/{{name}}.tsv"
    resources:
        dvc=1,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench data fetch {wildcards.name} > {log} 2>&1"


rule datasets:
    """`snakemake datasets`: restore (pull) or build every dataset the config uses, nothing else."""
    input:
        [dataset_marker(name) for name in PLAN.used_datasets],


# The corruption suite of a dataset, computed once (uint8, deterministic by seed) and read by every
# evaluate job of that dataset's models.
rule corruptions:
    input:
        lambda w: dataset_marker(w.dataset),
    output:
        f"{R}/corrupted/{{dataset}}/meta.json",
    params:
        args=lambda w: corruption_args(w.dataset),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/corruptions/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/corruptions/{{dataset}}.tsv"
    threads: THREADS["evaluate"]
    resources:
        runtime=30,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench data corrupt --dataset {wildcards.dataset} {params.args} --out {params.out}"
        " --threads {threads} > {log} 2>&1"
