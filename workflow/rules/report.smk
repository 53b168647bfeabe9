def caption(figure):
    return "pass_at_k" if figure.stem.startswith("pass_at_") else figure.stem


rule report:
    input:
        records=eval_records(),
        train=train_metrics_files(),
    output:
        csv=L.metrics_csv,
        curves=L.curves_csv,
        units=L.units_csv,
        claims=L.claims_table,
        table=L.main_table,
        latex=L.latex_table,
        figures=[
            report(path, caption=f"../report/{caption(path)}.rst", category="Metrics", labels={"figure": path.stem})
            for path in figures()
        ],
    params:
        job=STUDY.job("report").to_json(),
        figures=L.figures_dir,
    log:
        L.log("report"),
    shell:
        "exec {EBFT} report --job {params.job:q} {input.records} --train-metrics {input.train} "
        "--metrics-csv {output.csv} --table {output.table} --figures {params.figures} --stop-with-parent > {log} 2>&1"
