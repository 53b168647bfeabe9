rule eval_ce:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        same_as=copied_from("ce"),  # empty, or the record this evaluation copies
    output:
        L.eval_file("ce", "{task}", "{method}"),
    params:
        job=eval_job("ce"),
        data=lambda wildcards, input: Path(input.heldout).parent,
        method=cli_method,
        same_as=same_as_flag,
    log:
        L.log("eval_ce", "{task}", "{method}"),
    threads: eval_threads("ce")
    resources:
        **memory("eval_ce"),
    shell:
        "exec {EBFT} eval --kind ce --task {wildcards.task} {params.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output} --threads {threads} --stop-with-parent "
        "{params.same_as} > {log} 2>&1"


rule eval_fm:
    input:
        model=eval_model,
        base=task_base_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        same_as=copied_from("fm"),  # empty, or the record this evaluation copies
    output:
        L.eval_file("fm", "{task}", "{method}"),
    params:
        job=eval_job("fm"),
        data=lambda wildcards, input: Path(input.heldout).parent,
        method=cli_method,
        same_as=same_as_flag,
    log:
        L.log("eval_fm", "{task}", "{method}"),
    threads: eval_threads("fm")
    resources:
        **memory("eval_fm"),
    shell:
        "exec {EBFT} eval --kind fm --task {wildcards.task} {params.method} --job {params.job:q} "
        "--model-dir {input.model} --base-dir {input.base} --data-dir {params.data} --out {output} "
        "--threads {threads} --stop-with-parent {params.same_as} > {log} 2>&1"


rule eval_code:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        same_as=copied_from("code"),  # empty, or the record this evaluation copies
    output:
        record=L.eval_file("code", "{task}", "{method}"),
        samples=L.samples_file("{task}", "{method}"),
    params:
        job=eval_job("code"),
        data=lambda wildcards, input: Path(input.heldout).parent,
        method=cli_method,
        same_as=same_as_flag,
    log:
        L.log("eval_code", "{task}", "{method}"),
    threads: eval_threads("code")
    resources:
        **memory("eval_code"),
    priority: 1  # the longest evaluations before validation CE, FM and translation
    shell:
        "exec {EBFT} eval --kind code --task {wildcards.task} {params.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output.record} --samples {output.samples} "
        "--threads {threads} --stop-with-parent {params.same_as} > {log} 2>&1"


rule eval_translation:
    input:
        model=eval_model,
        heldout=L.data_dir("{task}") / "heldout.jsonl",
        same_as=copied_from("translation"),  # empty, or the record this evaluation copies
    output:
        record=L.eval_file("translation", "{task}", "{method}"),
        samples=L.samples_file("{task}", "{method}", "translation"),
    params:
        job=eval_job("translation"),
        data=lambda wildcards, input: Path(input.heldout).parent,
        method=cli_method,
        same_as=same_as_flag,
    log:
        L.log("eval_translation", "{task}", "{method}"),
    threads: eval_threads("translation")
    resources:
        **memory("eval_translation"),
    shell:
        "exec {EBFT} eval --kind translation --task {wildcards.task} {params.method} --job {params.job:q} "
        "--model-dir {input.model} --data-dir {params.data} --out {output.record} --samples {output.samples} "
        "--threads {threads} --stop-with-parent {params.same_as} > {log} 2>&1"
