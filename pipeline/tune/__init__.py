"""The tune stage: search, objective, report and serving profiles."""
