# dlbench: the course's results report as one DAG. Logic lives in workflow/rules/*.smk and src/dlbench.
configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/supervised.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/adapt.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
