"""Analysis of runs: metrics, rollout-record tables, plots and the results report."""
