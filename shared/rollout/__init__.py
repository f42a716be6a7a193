"""Rollout tooling for admins: the inventory of SMTP AUTH use, the bulk import of exceptions, and a
mailbox's history. Reads Exchange, Graph and storage; grants only through the one grant path."""
