# Adaptation of pretrained backbones. The frozen-feature variants of one backbone (linear probe, kNN)
# share one job and one feature pass; every trained variant (fine-tuning, LP-FT ...) is its own job,
# so changing its recipe retrains it alone and a crash in it never touches another variant's model.
# A variant with `of` (LP-FT) reads the model of the variant it starts from.

# One rule per FROZEN_SETS entry (one unless an adapt variant's `pretrain:` list gives some pretrain variants
# more frozen variants): a rule's outputs are fixed, its `pretrain` constraint picks the pretrained models.
for i, (variants, pretrains) in enumerate(FROZEN_SETS):

    rule:
        name:
            frozen_rule_name("adapt_frozen", i)
        input:
            source=model_file(PRETRAINED),
            data=lambda w: dataset_marker(w.dataset),
        output:
            weights=frozen_outputs("models", "model.safetensors", variants),
            cards=frozen_outputs("models", "model.json", variants),
        wildcard_constraints:
            pretrain=alternation(pretrains),
        params:
            recipe=frozen_recipes_arg,
            source=lambda w, input: os.path.dirname(input.source),
            outs=lambda w, output: " ".join(os.path.dirname(p) for p in output.weights),
            device=DEVICE,
        log:
            f"{R}/logs/adapt/{PRETRAINED}.frozen.log",
        benchmark:
            f"{R}/benchmarks/adapt/{PRETRAINED}.frozen.tsv"
        threads: THREADS["train"]
        resources:
            gpu=GPU,
            runtime=frozen_minutes,
        conda:
            "../envs/dlbench.yaml"
        shell:
            "dlbench train adapt --recipe {params.recipe} --source {params.source} --out {params.outs}"
            " --threads {threads} --device {params.device} > {log} 2>&1"


rule adapt:
    input:
        source=lambda w: model_file(PLAN.entries[model_id(w)].source),
        data=lambda w: dataset_marker(w.dataset),
    output:
        weights=f"{R}/models/{ADAPTED}/model.safetensors",
        card=f"{R}/models/{ADAPTED}/model.json",
        history=f"{R}/models/{ADAPTED}/history.json",
    wildcard_constraints:
        pretrain=PRETRAIN_VARIANTS,
        adapt=TRAINED,
    params:
        recipe=lambda w: recipe_arg(model_id(w)),
        source=lambda w, input: os.path.dirname(input.source),
        out=lambda w, output: os.path.dirname(output.weights),
        checkpoints=f"{R}/checkpoints/{PRETRAINED}",
        device=DEVICE,
    log:
        f"{R}/logs/adapt/{ADAPTED}.log",
    benchmark:
        f"{R}/benchmarks/adapt/{ADAPTED}.tsv"
    threads: THREADS["train"]
    resources:
        gpu=GPU,
        runtime=lambda w: train_minutes(w, {}),
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench train adapt --recipe {params.recipe} --source {params.source} --out {params.out}"
        " --checkpoint-dir {params.checkpoints} --threads {threads} --device {params.device} > {log} 2>&1"
