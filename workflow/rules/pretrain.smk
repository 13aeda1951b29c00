# Self-supervised pretraining: one backbone per (dataset, backbone, method, seed), trained on the
# dataset's unlabeled split. The backbone-only model directory is the input of rule adapt.


rule pretrain:
    input:
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=f"results/models/{PRETRAINED}/model.safetensors",
        meta=f"results/models/{PRETRAINED}/model.json",
        history=f"results/models/{PRETRAINED}/history.json",
    wildcard_constraints:
        pretrain=PRETRAIN_METHODS,
    params:
        recipe=pretrain_recipe_json,
        out=lambda w, output: os.path.dirname(output.weights),
        checkpoint=f"results/checkpoints/{PRETRAINED}.pt",
        device=CFG["device"],
        data_root=DATA,
    log:
        f"results/logs/pretrain/{PRETRAINED}.log",
    benchmark:
        f"results/benchmarks/pretrain/{PRETRAINED}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=1 if CFG["device"].startswith("cuda") else 0,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train pretrain --recipe '{params.recipe}' --data-root {params.data_root} --out {params.out}"
        " --checkpoint {params.checkpoint} --threads {threads} --device {params.device} > {log} 2>&1"
