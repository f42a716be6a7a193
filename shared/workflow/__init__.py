"""The request and approval workflow: `requests` (submit, decide, revoke), `grants` (the one grant
and revoke path, shared with the CLI), `validation`, `notifications` and `mail` (the outbox), and
`lifecycle` (reminders, expiry, repair). Refusals are `shared.errors.Refusal`s; no HTTP here."""
