"""The studies' protocol library: what every study shares. Data flow: hat -> this library -> studies.

    protocol      Study (a study's declaration) and run(study): command line, phases, report
    scale, arms   study sizes and their presets; the compared arms
    cli, context  the command line and the Context made from it (stores, MLflow parent runs, data)
    phases        phase 1 (meta-learners), replicates, tuning then replicates, values computed once
    tuning        search spaces and per-arm tuning on equal budgets (designs each, marginal)
    workqueue     units of work in the Optuna storage: claims, heartbeats, resume, fault injection
    launch        several workers (submitit: local or SLURM)
    analysis      per-run metrics, paired comparisons, verdicts of a Holm family
    stats         the statistics, pure functions over arrays
    verdicts      Verdict values and their renderings (report line, console table, MLflow tags)
    report        report.md, CSVs, legend, tuning section; provenance; progress bars
    figures       every study figure
    rule_inputs   the inputs a rule sees (one synapse draw; backprop and HAT-forward drivers; recorded samples)
    rule_analysis rules as functions: polynomial fits, distances, partial dependence, change points
    rule_shape, rule_time, dose, league, problems   the longer analyses of rule_form, rule_over_time,
                  dose_response, rule_league and transfer
"""
