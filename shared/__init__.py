"""SMTP AUTH Guard's library. A map, lowest layer first; each layer imports only those below it
(tests/unit/test_import_rule.py keeps this true):

    model/        plain data and rules, no I/O: mailboxes and changes, exception records, requests,
                  notifications, runs, the actor and the principal, the clock, the backoff formula
    errors.py     the one exception hierarchy, domain refusals included
    settings.py   validated settings, by subject (Settings; WorkflowSettings)
    storage/      Azure Table Storage: one repository per aggregate; tables.py holds every key layout
    microsoft/    outbound adapters: credential and actor, transport, Exchange admin API, Graph
    bootstrap.py  the one composition root: builds the credential, the store and the clients
    sweep/        the reconcile loop: planner (pure), engine (one run), applier ($batch and audit),
                  recovery (settling a run that died), hold (pause and resume)
    workflow/     requests and approvals, grants and revokes (one path each), notifications, the
                  daily lifecycle; raises refusals and knows nothing of HTTP
    web/          the HTTP edge: handlers, body limits, CSRF, responses, Easy Auth's principal,
                  and refusals.py, the one table from a refusal to a status code
    rollout/      the inventory of SMTP AUTH use, the bulk import of exceptions, a mailbox's history
    cli/          `python -m shared.cli`, for admins and scripts (rollout.py: inventory, import, show)

`model` imports nothing of ours. `storage` and `microsoft` import only `model`, `errors` and
`settings`; `bootstrap` those and the adapters; `sweep` and `workflow` those and `bootstrap`;
`rollout` those and `workflow`; `web`, `cli` and `functions/` sit on top.
"""
