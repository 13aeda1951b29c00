# dlbench: the course's results report as one DAG. Logic lives in workflow/rules/*.smk and src/dlbench.
configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/adapt.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report.html",
        "results/tables/metrics.parquet",
        expand("results/figures/{figure}", figure=FIGURES),
    default_target: True
