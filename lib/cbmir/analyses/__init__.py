"""One module per study of the report. Each takes arrays and tables (never the notebook context) and returns tables."""
