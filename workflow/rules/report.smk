# Report layer: cached logits -> tidy Parquet tables -> figures -> self-contained HTML.


rule aggregate:
    input:
        logits=expand("results/predictions/{model}/logits.parquet", model=all_model_ids()),
        meta=expand("results/models/{model}/model.json", model=all_model_ids()),
        pretrained=expand("results/models/{model}/history.json", model=pretrained_ids()),
    output:
        metrics="results/tables/metrics.parquet",
        history="results/tables/history.parquet",
        summary="results/tables/summary.parquet",
    log:
        "results/logs/report/aggregate.log",
    benchmark:
        "results/benchmarks/report/aggregate.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report aggregate --models results/models --predictions results/predictions"
        " --out-dir results/tables > {log} 2>&1"


rule figures:
    input:
        metrics="results/tables/metrics.parquet",
        history="results/tables/history.parquet",
        tsne=tsne_files(),
    output:
        report(
            "results/figures/id_vs_ood.png",
            caption="../report/id_vs_ood.rst",
            category="Supervised baseline",
        ),
        report(
            "results/figures/corruption_severity.png",
            caption="../report/corruption_severity.rst",
            category="Supervised baseline",
        ),
        report(
            "results/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Supervised baseline",
        ),
        report(
            "results/figures/ssl_protocols.png",
            caption="../report/ssl_protocols.rst",
            category="Self-supervised pretraining",
        ),
        report(
            "results/figures/ssl_collapse.png",
            caption="../report/ssl_collapse.rst",
            category="Self-supervised pretraining",
        ),
        report(
            "results/figures/ssl_tsne.png",
            caption="../report/ssl_tsne.rst",
            category="Self-supervised pretraining",
        ),
    log:
        "results/logs/report/figures.log",
    benchmark:
        "results/benchmarks/report/figures.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report figures --tables results/tables --tsne results/tsne --out-dir results/figures > {log} 2>&1"


rule report_html:
    input:
        metrics="results/tables/metrics.parquet",
        summary="results/tables/summary.parquet",
        history="results/tables/history.parquet",
        figures=expand("results/figures/{figure}", figure=FIGURES),
    output:
        report(
            "results/report.html",
            caption="../report/report_html.rst",
            category="Report",
        ),
    params:
        config=workflow.configfiles[0] if workflow.configfiles else "config.yaml",
    log:
        "results/logs/report/html.log",
    benchmark:
        "results/benchmarks/report/html.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report html --tables results/tables --figures results/figures --config {params.config}"
        " --out {output} > {log} 2>&1"
