"""Deployment declarations: schedules, parameters, concurrency; no pipeline logic."""
