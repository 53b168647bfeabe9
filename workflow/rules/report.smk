# The report in small jobs, so that each output rebuilds alone: `collect` gathers the evaluation records and training
# logs into the tidy CSVs; `tables` and one `figure_<name>` job per figure draw from those CSVs alone.


def caption(figure):
    if figure.stem.startswith("sweep_"):
        return "sweep"  # one caption for every sweep's figure, naming it
    return "pass_at_k" if figure.stem.startswith("pass_at_") else figure.stem


rule collect:
    input:
        records=eval_records(),
        train=train_metrics_files(),
        evals=eval_during_files(),
        eval_units=[path.with_name("eval_units.json") for path in eval_during_files()],
    output:
        csv=L.metrics_csv,
        curves=L.curves_csv,
        units=L.units_csv,
    params:
        job=STUDY.job("report").to_json(),
    log:
        L.log("collect"),
    shell:
        "exec {EBFT} report --job {params.job:q} {input.records} --train-metrics {input.train} --eval-metrics {input.evals} "
        "--metrics-csv {output.csv} --outputs csv --stop-with-parent > {log} 2>&1"


rule tables:
    input:
        csv=L.metrics_csv,
        units=L.units_csv,
        curves=L.curves_csv,  # the budgets of the matched-budget claims
    output:
        claims=L.claims_table,
        table=L.main_table,
        latex=L.latex_table,
    log:
        L.log("tables"),
    shell:
        "exec {EBFT} report --from-csv {input.csv} --table {output.table} --outputs tables --stop-with-parent "
        "> {log} 2>&1"


for _figure in figures():

    rule:
        name:
            f"figure_{_figure.stem}"
        input:
            csv=L.metrics_csv,
            curves=L.curves_csv,
        output:
            report(_figure, caption=f"../report/{caption(_figure)}.rst", category="Metrics", labels={"figure": _figure.stem}),
        params:
            name=_figure.stem,
            figures=L.figures_dir,
        log:
            L.log("figure", _figure.stem),
        localrule: True
        shell:
            "exec {EBFT} report --from-csv {input.csv} --figures {params.figures} --outputs {params.name} "
            "--stop-with-parent > {log} 2>&1"
