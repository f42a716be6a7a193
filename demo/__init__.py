"""`make demo`: reconcile a realistic local tenant, first in report mode, then in enforce mode."""
