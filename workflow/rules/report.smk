# Report layer: cached outputs -> tidy Parquet tables -> t-SNE, figures, findings -> self-contained HTML.
# The tables hold exactly the models this config makes (the ids are passed, never globbed).


rule aggregate:
    input:
        predictions=[group_dir(g) for g in PLAN.eval_groups],
        cards=[model_file(m, "model.json") for m in PLAN.evaluated_ids],
        pretrained=[model_file(m, "history.json") for m in PLAN.ids(stage="pretrain")],
    output:
        metrics=f"{R}/tables/metrics.parquet",
        history=f"{R}/tables/history.parquet",
        summary=f"{R}/tables/summary.parquet",
    params:
        models=" ".join(PLAN.evaluated_ids),
        history=" ".join(PLAN.ids(stage="pretrain")),
        results=lambda w, output: os.path.dirname(os.path.dirname(output.metrics)),
        out=lambda w, output: os.path.dirname(output.metrics),
    log:
        f"{R}/logs/report/aggregate.log",
    benchmark:
        f"{R}/benchmarks/report/aggregate.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report aggregate --results {params.results} --models {params.models} --history {params.history}"
        " --out-dir {params.out} > {log} 2>&1"


rule tsne:
    input:
        sorted({group_dir(group_key(m)) for m in PLAN.tsne_models}),
    output:
        f"{R}/tables/tsne.parquet",
    params:
        models=" ".join(f"{m}={panel}" for m, panel in PLAN.tsne_models.items()),
        results=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
    log:
        f"{R}/logs/report/tsne.log",
    benchmark:
        f"{R}/benchmarks/report/tsne.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report tsne --results {params.results} --model {params.models} --out {output} > {log} 2>&1"


rule figures:
    input:
        metrics=f"{R}/tables/metrics.parquet",
        history=f"{R}/tables/history.parquet",
        summary=f"{R}/tables/summary.parquet",
        tsne=f"{R}/tables/tsne.parquet",
    output:
        [report(f"{R}/figures/{f}", caption=f"../report/{f.removesuffix('.png')}.rst", category=title)
         for title, f in FIGURES],
    params:
        tables=lambda w, input: os.path.dirname(input.metrics),
        out=lambda w, output: os.path.dirname(output[0]),
    log:
        f"{R}/logs/report/figures.log",
    benchmark:
        f"{R}/benchmarks/report/figures.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report figures --tables {params.tables} --out-dir {params.out} > {log} 2>&1"


rule findings:
    input:
        metrics=f"{R}/tables/metrics.parquet",
        history=f"{R}/tables/history.parquet",
        summary=f"{R}/tables/summary.parquet",
    output:
        f"{R}/tables/findings.parquet",
    params:
        tables=lambda w, input: os.path.dirname(input.metrics),
    log:
        f"{R}/logs/report/findings.log",
    benchmark:
        f"{R}/benchmarks/report/findings.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report findings --tables {params.tables} --out {output} > {log} 2>&1"


rule report_html:
    input:
        metrics=f"{R}/tables/metrics.parquet",
        summary=f"{R}/tables/summary.parquet",
        history=f"{R}/tables/history.parquet",
        findings=f"{R}/tables/findings.parquet",
        figures=[f"{R}/figures/{f}" for _, f in FIGURES],
    output:
        report(f"{R}/report.html", caption="../report/report_html.rst", category="Report"),
    params:
        config=workflow.configfiles[0] if workflow.configfiles else "config.yaml",
        tables=lambda w, input: os.path.dirname(input.metrics),
        figures=lambda w, input: os.path.dirname(input.figures[0]),
    log:
        f"{R}/logs/report/html.log",
    benchmark:
        f"{R}/benchmarks/report/html.tsv"
    conda:
        "../envs/dlbench.yaml"
    shell:
        "dlbench report html --tables {params.tables} --figures {params.figures} --config {params.config}"
        " --out {output} > {log} 2>&1"
