"""Monitoring: each day against the champions (drift, quality), and the drift sensor that
turns persistent drift into one retraining."""
