# Training stages. Each writes a model directory (safetensors + model.json + history.json).
# The resumable checkpoint lives outside the outputs, so a crashed or killed job resumes.


rule supervised:
    input:
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=f"results/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/model.safetensors",
        meta=f"results/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/model.json",
        history=f"results/models/{{dataset}}/{{backbone}}/none/supervised/none/none/seed{{seed}}/history.json",
    params:
        recipe=supervised_recipe_json,
        out=lambda w, output: os.path.dirname(output.weights),
        checkpoint="results/checkpoints/{dataset}/{backbone}/none/supervised/none/none/seed{seed}.pt",
        device=CFG["device"],
        data_root=DATA,
    log:
        "results/logs/supervised/{dataset}/{backbone}/seed{seed}.log",
    benchmark:
        "results/benchmarks/supervised/{dataset}/{backbone}/seed{seed}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=1 if CFG["device"].startswith("cuda") else 0,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train supervised --recipe '{params.recipe}' --data-root {params.data_root} --out {params.out}"
        " --checkpoint {params.checkpoint} --threads {threads} --device {params.device} > {log} 2>&1"
