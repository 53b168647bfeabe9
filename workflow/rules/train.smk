rule train_sft:
    input:
        model=task_base_model,
        train=L.data_dir("{task}") / "train.jsonl",
    output:
        model=directory(L.checkpoint("sft", "{task}")),
        metrics=L.run_dir("sft", "{task}") / "train_metrics.csv",
        config=L.run_dir("sft", "{task}") / "resolved_config.yaml",
        evals=L.run_dir("sft", "{task}") / "eval_metrics.csv",  # evaluations during training (empty without)
        eval_units=L.run_dir("sft", "{task}") / "eval_units.json",
    params:
        job=train_job("sft"),
        data=lambda wildcards, input: Path(input.train).parent,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        L.log("train_sft", "{task}"),
    threads: train_threads
    resources:
        gpu=train_gpus,
        launch=train_launch,
        **memory("train_sft"),
    priority: 2  # every training before the evaluations, so that the study ends on short jobs
    shell:
        "exec {EBFT} train --method sft --task {wildcards.task} --job {params.job:q} --model-dir {input.model} "
        "--data-dir {params.data} --out {params.out} --threads {threads} --stop-with-parent {resources.launch} "
        "> {log} 2>&1"


rule train_ebft:
    input:
        model=task_base_model,
        start=start_model,
        train=L.data_dir("{task}") / "train.jsonl",
    output:
        model=directory(L.checkpoint("ebft", "{task}")),
        metrics=L.run_dir("ebft", "{task}") / "train_metrics.csv",
        config=L.run_dir("ebft", "{task}") / "resolved_config.yaml",
        evals=L.run_dir("ebft", "{task}") / "eval_metrics.csv",  # evaluations during training (empty without)
        eval_units=L.run_dir("ebft", "{task}") / "eval_units.json",
    params:
        job=train_job("ebft"),
        data=lambda wildcards, input: Path(input.train).parent,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        L.log("train_ebft", "{task}"),
    threads: train_threads
    resources:
        gpu=train_gpus,
        launch=train_launch,
        **memory("train_ebft"),
    priority: 3  # long jobs first, so that no long job is left to run alone at the end
    shell:
        "exec {EBFT} train --method ebft --task {wildcards.task} --job {params.job:q} --model-dir {input.model} "
        "--start-dir {input.start} --data-dir {params.data} --out {params.out} --threads {threads} --stop-with-parent "
        "{resources.launch} > {log} 2>&1"


rule train_rlvr:
    input:
        model=task_base_model,
        start=start_model,
        train=L.data_dir("{task}") / "train.jsonl",
    output:
        model=directory(L.checkpoint("rlvr", "{task}")),
        metrics=L.run_dir("rlvr", "{task}") / "train_metrics.csv",
        config=L.run_dir("rlvr", "{task}") / "resolved_config.yaml",
        evals=L.run_dir("rlvr", "{task}") / "eval_metrics.csv",  # evaluations during training (empty without)
        eval_units=L.run_dir("rlvr", "{task}") / "eval_units.json",
        settings=L.run_dir("rlvr", "{task}") / "rlvr_settings.yaml",
    params:
        job=train_job("rlvr"),
        data=lambda wildcards, input: Path(input.train).parent,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        L.log("train_rlvr", "{task}"),
    threads: job_threads
    resources:
        **memory("train_rlvr"),
    priority: 4  # the longest jobs first, so that no long job is left to run alone at the end
    shell:
        "exec {EBFT} train --method rlvr --task {wildcards.task} --job {params.job:q} --model-dir {input.model} "
        "--start-dir {input.start} --data-dir {params.data} --out {params.out} --threads {threads} --stop-with-parent "
        "> {log} 2>&1"


rule train_sweep:
    input:
        model=task_base_model,
        start=start_model,
        train=L.data_dir("{task}") / "train.jsonl",
    output:
        model=directory(L.checkpoint("{run}", "{task}")),
        metrics=L.run_dir("{run}", "{task}") / "train_metrics.csv",
        config=L.run_dir("{run}", "{task}") / "resolved_config.yaml",
        evals=L.run_dir("{run}", "{task}") / "eval_metrics.csv",  # evaluations during training (empty without)
        eval_units=L.run_dir("{run}", "{task}") / "eval_units.json",
    params:
        job=run_job,
        data=lambda wildcards, input: Path(input.train).parent,
        out=lambda wildcards, output: Path(output.metrics).parent,
    log:
        L.log("train_sweep", "{run}", "{task}"),
    threads: train_threads
    resources:
        gpu=train_gpus,
        launch=train_launch,
        **memory("train_sweep"),
    priority: 2  # every training before the evaluations, so that the study ends on short jobs
    shell:
        "exec {EBFT} train --method ebft --run {wildcards.run:q} --task {wildcards.task} --job {params.job:q} "
        "--model-dir {input.model} --start-dir {input.start} --data-dir {params.data} --out {params.out} "
        "--threads {threads} --stop-with-parent {resources.launch} > {log} 2>&1"
