rule prepare_model:
    output:
        directory(L.model_dir("{model}")),
    params:
        job=model_job,
    log:
        L.log("prepare_model", "{model}"),
    threads: job_threads
    resources:
        **memory("prepare_model"),
    shell:
        "exec {EBFT} prepare-model --job {params.job:q} --model {wildcards.model} --out {output} "
        "--threads {threads} --stop-with-parent > {log} 2>&1"


rule prepare_data:
    output:
        train=L.data_dir("{task}") / "train.jsonl",
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        manifest=L.data_dir("{task}") / "manifest.json",
    params:
        job=data_job,
        out=lambda wildcards, output: Path(output.manifest).parent,
    log:
        L.log("prepare_data", "{task}"),
    shell:
        "exec {EBFT} prepare-data --job {params.job:q} --task {wildcards.task} --out {params.out} --stop-with-parent "
        "> {log} 2>&1"
