# Supervised training from scratch: dataset/backbone/none/supervised/none/none/seedN. The resumable
# checkpoint lives outside the outputs, so a crashed or killed job resumes.


rule supervised:
    input:
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=f"{R}/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/model.safetensors",
        card=f"{R}/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/model.json",
        history=f"{R}/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/history.json",
    params:
        recipe=lambda w: recipe_arg(model_id(w, pretrain="none", adapt="supervised")),
        out=lambda w, output: os.path.dirname(output.weights),
        checkpoint=f"{R}/checkpoints/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}.pt",
        device=DEVICE,
    log:
        f"{R}/logs/supervised/{{dataset}}/{{backbone}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/supervised/{{dataset}}/{{backbone}}/seed{{seed}}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=GPU,
        runtime=lambda w: train_minutes(w, {"pretrain": "none", "adapt": "supervised"}),
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train supervised --recipe {params.recipe} --out {params.out}"
        " --checkpoint {params.checkpoint} --threads {threads} --device {params.device} > {log} 2>&1"
