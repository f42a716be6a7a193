"""Azure Functions entry point (Python v2 model). It only registers blueprints.

Importing this module must work with no app settings: the host indexes functions at import.
"""

import logging

import azure.functions as func

from functions.approval_http import bp as approval_http
from functions.exception_http import bp as exception_http
from functions.health_http import bp as health_http
from functions.reconcile_timer import bp as reconcile_timer
from functions.sweep_timer import bp as sweep_timer
from functions.workflow_timers import bp as workflow_timers

# The Azure SDKs log every HTTP request and response at INFO; in Application Insights that is noise
# and cost. host.json's logLevel filters by Functions category, not by Python logger, so it is set here.
logging.getLogger("azure").setLevel(logging.WARNING)

app = func.FunctionApp()
for blueprint in (reconcile_timer, sweep_timer, exception_http, approval_http, health_http, workflow_timers):
    app.register_functions(blueprint)
