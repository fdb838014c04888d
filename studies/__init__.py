"""The studies: one file each, run as `python -m studies.<name>` (`--help` lists the flags).

    fixed_rule      fixed rules applied to fresh learners (the paper's 2·v_j, frozen early and final M)
    epochs          HAT against backprop along training (Figure 1, left)
    labels          accuracy against the label fraction θ (Figure 1, right)
    mean_rule       each meta-learner against their pointwise mean (H2)
    rule_over_time  the meta-learned rule over time (H1, H3)
    rule_form       what the meta-learned rule computes (Figure 2)
    dose_response   the fixed rules' accuracy difference against their rate
    rule_league     rule families of the literature against the control and the trainable M
    transfer        problem similarity through meta-learned rules, and transfer
    authors         the authors' 2019 configuration, ablated

Each declares a `studies.lib.protocol.Study` (arms, hypotheses, phase-1 needs, report sections of its own);
`studies.lib` is the protocol library beneath them.
"""
