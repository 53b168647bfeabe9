rule eval_ce:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
    output:
        L.eval_file("ce", "{task}", "{method}"),
    params:
        job=eval_job("ce"),
        data=lambda wildcards, input: Path(input.heldout).parent,
    log:
        L.log("eval_ce", "{task}", "{method}"),
    threads: all_cores
    shell:
        "exec {EBFT} eval --kind ce --task {wildcards.task} --method {wildcards.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output} --threads {threads} --stop-with-parent "
        "> {log} 2>&1"


rule eval_fm:
    input:
        model=eval_model,
        base=task_base_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
    output:
        L.eval_file("fm", "{task}", "{method}"),
    params:
        job=eval_job("fm"),
        data=lambda wildcards, input: Path(input.heldout).parent,
    log:
        L.log("eval_fm", "{task}", "{method}"),
    threads: all_cores
    shell:
        "exec {EBFT} eval --kind fm --task {wildcards.task} --method {wildcards.method} --job {params.job:q} "
        "--model-dir {input.model} --base-dir {input.base} --data-dir {params.data} --out {output} "
        "--threads {threads} --stop-with-parent > {log} 2>&1"


rule eval_code:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        same_as=base_code_source,  # empty, or the record of the task whose problems this task's base model shares
    output:
        record=L.eval_file("code", "{task}", "{method}"),
        samples=L.samples_file("{task}", "{method}"),
    params:
        job=eval_job("code"),
        data=lambda wildcards, input: Path(input.heldout).parent,
        same_as=lambda wildcards, input: f"--same-as {shlex.quote(input.same_as[0])}" if input.same_as else "",
    log:
        L.log("eval_code", "{task}", "{method}"),
    threads: lambda wildcards: 1 if base_code_source(wildcards) else workflow.cores  # a copy
    shell:
        "exec {EBFT} eval --kind code --task {wildcards.task} --method {wildcards.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output.record} --samples {output.samples} "
        "{params.same_as} --threads {threads} --stop-with-parent > {log} 2>&1"


rule eval_translation:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
    output:
        record=L.eval_file("translation", "{task}", "{method}"),
        samples=L.samples_file("{task}", "{method}", "translation"),
    params:
        job=eval_job("translation"),
        data=lambda wildcards, input: Path(input.heldout).parent,
    log:
        L.log("eval_translation", "{task}", "{method}"),
    threads: all_cores
    shell:
        "exec {EBFT} eval --kind translation --task {wildcards.task} --method {wildcards.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output.record} --samples {output.samples} "
        "--threads {threads} --stop-with-parent > {log} 2>&1"
