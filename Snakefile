# EBFT reproduction study: prepare → train → evaluate → report.
#   snakemake --cores all                                 # default profile (config/cpu.yaml, offline, CPU)
#   snakemake --cores all --configfile config/smoke.yaml  # CI profile, about 4 minutes
#   snakemake --cores all --configfile config/paper.yaml  # released models and data (GPUs, hub)
# A --configfile replaces the default profile rather than merging into it.

if not workflow.overwrite_configfiles:
    configfile: "config/cpu.yaml"


include: "workflow/rules/common.smk"  # no rules: the study as ebft.resolve reads it, layout, per-rule settings
include: "workflow/rules/prepare.smk"  # prepare_model, prepare_data
include: "workflow/rules/train.smk"  # train_sft, train_ebft, train_rlvr, train_sweep
include: "workflow/rules/eval.smk"  # eval_ce, eval_fm, eval_code, eval_translation
include: "workflow/rules/report.smk"  # collect, tables, figure_<name> (one job per figure)


# Run where Snakemake runs, never submitted to a cluster: the downloads (compute nodes often have no internet) and the
# report's small jobs. No effect on a local run.
localrules:
    prepare_model,
    prepare_data,
    collect,
    tables,


rule all:
    input:
        study_products(),
        L.metrics_csv,
        L.main_table,
        L.latex_table,
        L.claims_table,
        figures(),
    default_target: True
