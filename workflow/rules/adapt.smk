# Evaluation protocols on a pretrained backbone. One job runs every configured protocol
# (linear probe, kNN, fine-tuning, LP-FT ...): they share the frozen-feature pass and LP-FT
# starts from the linear probe. Each protocol still writes its own model directory, and the
# t-SNE of test embeddings before/after fine-tuning is written alongside.


rule adapt:
    input:
        pretrained=f"results/models/{PRETRAINED}/model.safetensors",
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=adapted("results/models/{{dataset}}/{{backbone}}/{{pretrain}}/{adapt}/none/none/seed{{seed}}/model.safetensors"),
        meta=adapted("results/models/{{dataset}}/{{backbone}}/{{pretrain}}/{adapt}/none/none/seed{{seed}}/model.json"),
        tsne="results/tsne/{dataset}/{backbone}/{pretrain}/seed{seed}.parquet",
    wildcard_constraints:
        pretrain=PRETRAIN_METHODS,
    params:
        recipe=adapt_recipe_json,
        pretrained=lambda w, input: os.path.dirname(input.pretrained),
        outs=lambda w, output: " ".join(f"{a}={os.path.dirname(p)}" for a, p in zip(PROTOCOLS, output.weights)),
        checkpoints=f"results/checkpoints/{PRETRAINED}",
        device=CFG["device"],
        data_root=DATA,
    log:
        f"results/logs/adapt/{PRETRAINED}.log",
    benchmark:
        f"results/benchmarks/adapt/{PRETRAINED}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=1 if CFG["device"].startswith("cuda") else 0,
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train adapt --recipe '{params.recipe}' --pretrained {params.pretrained} --data-root {params.data_root}"
        " --out {params.outs} --tsne {output.tsne} --checkpoint-dir {params.checkpoints}"
        " --threads {threads} --device {params.device} > {log} 2>&1"
