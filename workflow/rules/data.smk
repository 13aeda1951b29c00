# Data layer: DVC owns the bytes. Each dataset is pulled from the DVC remote, or built with
# `dvc repro` and pushed when the remote does not have it yet. DVC takes a repo-wide lock,
# so these jobs are serialized through the `dvc` resource (limit 1 in the profiles).


rule dataset:
    output:
        f"{DATA}/{{name}}/meta.json",
    log:
        "results/logs/dataset/{name}.log",
    benchmark:
        "results/benchmarks/dataset/{name}.tsv"
    resources:
        dvc=1,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench data fetch {wildcards.name} > {log} 2>&1"


rule datasets:
    """`snakemake datasets`: restore (pull) or build every dataset the config uses, nothing else."""
    input:
        [dataset_marker(name) for name in used_datasets()],
