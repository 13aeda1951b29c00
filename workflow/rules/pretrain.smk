# Self-supervised pretraining: one backbone per (dataset, backbone, pretrain variant, seed), trained on
# the dataset's unlabeled split. The backbone-only model directory is the input of the adapt rules.


rule pretrain:
    input:
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=f"{R}/models/{PRETRAINED}/model.safetensors",
        card=f"{R}/models/{PRETRAINED}/model.json",
        history=f"{R}/models/{PRETRAINED}/history.json",
    wildcard_constraints:
        pretrain=PRETRAIN_VARIANTS,
    params:
        recipe=lambda w: recipe_arg(model_id(w, adapt="none")),
        out=lambda w, output: os.path.dirname(output.weights),
        checkpoint=f"{R}/checkpoints/{PRETRAINED}.pt",
        device=DEVICE,
    log:
        f"{R}/logs/pretrain/{PRETRAINED}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{PRETRAINED}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=GPU,
        runtime=lambda w: train_minutes(w, {"adapt": "none"}),
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train pretrain --recipe {params.recipe} --out {params.out}"
        " --checkpoint {params.checkpoint} --threads {threads} --device {params.device} > {log} 2>&1"
