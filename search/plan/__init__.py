"""Serving plans: which domains share which merged adapter body.

A plan partitions N domains into G groups; each group is served by one merged body (its
own operator and parameters) with each domain's own head, and a group of one domain is
that domain's own adapter. ``signmix plan CONFIG`` finds, for every G from 1 up, the best
plan it can within a budget of group evaluations, against the N-adapter bound.

Pure planning logic (no Ray, no MLflow): :mod:`search.plan.partition` (partitions, the
agglomerative start, moves), :mod:`search.plan.planner` (the local search over
partitions), :mod:`search.plan.neighbourhood` (every neighbour of a plan estimated at once), :mod:`search.plan.compatibility` (pairwise distances), :mod:`search.plan.front`
(the Pareto front, the chosen plan, intervals), :mod:`search.plan.serving_choice` (the per-domain
floor, a group's serving option). The glue: :mod:`search.plan.bodies` (a
group's body searched as Ray Tune trials recorded in MLflow), :mod:`search.plan.serving_plan`
(``run_plan``), :mod:`search.plan.group_serving` (each group's serving options, one Ray trial per
group), :mod:`search.plan.figure`, :mod:`search.plan.bundle` (export and evaluate).
"""
