"""Next-item recommendation: models behind one interface, one evaluator, behavioral checks,
importers for public session data. Pure Python: no Dagster, no warehouse."""
