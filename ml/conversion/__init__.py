"""Session conversion: from the events of a session so far, the probability it ends in a purchase.

`features` (one feature builder for serving and training), `dataset` (time split, prefix
sampling), `models` (majority, logistic, hgb, gru behind fit / predict_proba / save / load),
`metrics` (ranking, calibration, slices) and `gates` (promotion rules). Pure Python: no
Dagster, no warehouse.
"""
