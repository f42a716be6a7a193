"""SMTP AUTH Guard library: settings, Exchange client, store, planner, applier, sweep engine and CLI."""
