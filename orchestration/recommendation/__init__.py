"""Next-item recommendation: training set, candidates, evaluation with behavioral checks,
champion, batch predictions."""
