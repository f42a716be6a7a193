"""The HTTP edge behind `functions/`: handlers, body limits, CSRF, responses and Easy Auth's principal.
The only layer that knows status codes: `refusals.py` maps the workflow's refusals to them."""
