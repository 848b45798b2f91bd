"""Session conversion: training set, candidates, evaluation with its gates, champion, daily
predictions."""
