rule report:
    input:
        expand(L.eval_file("{kind}", "{task}", "{method}"), kind=EVALS, task=TASKS, method=EVAL_METHODS),
    output:
        csv=L.metrics_csv,
        table=L.main_table,
        figure=report(L.ce_figure, caption="../report/val_ce.rst", category="Validation cross-entropy"),
        fm_figure=report(L.fm_figure, caption="../report/fm_loss.rst", category="Feature-matching loss"),
    params:
        cfg=cfg_json(),
    log:
        L.log("report"),
    shell:
        "{EBFT} report --config {params.cfg:q} {input} --metrics-csv {output.csv} --table {output.table} "
        "--figure {output.figure} --fm-figure {output.fm_figure} > {log} 2>&1"
