"""Azure Functions entry point (Python v2 model). It only registers blueprints.

Importing this module must work with no app settings: the host indexes functions at import.
"""

import azure.functions as func

from functions.reconcile_timer import bp as reconcile_timer
from functions.sweep_timer import bp as sweep_timer

app = func.FunctionApp()
app.register_functions(reconcile_timer)
app.register_functions(sweep_timer)
