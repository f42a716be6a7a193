"""infra/main.bicep, parsed (pycep): the deployment's safety and least-privilege properties hold.

No Bicep compiler or Azure endpoint is reachable here, so this checks what can be checked offline: the
template parses, and the properties the product depends on are set as documented in infra/README.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "infra" / "main.bicep"
PLATFORM_SETTINGS = {
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
# Flex Consumption rejects these: the plan sets them itself.
FLEX_REJECTS = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE"}


@cache
def template() -> dict[str, Any]:
    return BicepParser().parse(file_path=TEMPLATE)


def resource(name: str) -> dict[str, Any]:
    return template()["resources"][name]


def config(name: str) -> dict[str, Any]:
    return resource(name)["config"]


def app_settings() -> dict[str, Any]:
    return {s["name"]: s["value"] for s in config("app")["properties"]["siteConfig"]["appSettings"]}


def test_the_template_declares_the_documented_resources() -> None:
    types = {r["type"] for r in template()["resources"].values()}
    assert types == {
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.OperationalInsights/workspaces",
        "Microsoft.Insights/components",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.Storage/storageAccounts/blobServices",
        "Microsoft.Storage/storageAccounts/blobServices/containers",
        "Microsoft.Authorization/roleAssignments",
        "Microsoft.Web/serverfarms",
        "Microsoft.Web/sites",
        "Microsoft.Web/sites/config",
    }
    assert config("plan")["sku"] == {"name": "FC1", "tier": "FlexConsumption"}


def test_the_sweeps_start_in_report_mode() -> None:
    parameter = template()["parameters"]["enforcementMode"]
    assert parameter["default"] == "report"
    assert app_settings()["ENFORCEMENT_MODE"] == "enforcementMode"


def test_nothing_holds_a_key_or_a_secret() -> None:
    storage = config("storage")["properties"]
    assert storage["allowSharedKeyAccess"] is False and storage["allowBlobPublicAccess"] is False
    assert config("insights")["properties"]["DisableLocalAuth"] is True
    text = TEMPLATE.read_text(encoding="utf-8")
    assert not re.search(r"listKeys|AccountKey=|SharedAccessSignature|InstrumentationKey=", text)
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert "Authorization=AAD" in json.dumps(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"])
    identity = config("app")["identity"]
    assert identity["type"] == "UserAssigned"  # one identity, the one Exchange and Graph grant


def test_transport_is_https_and_tls_1_2_only() -> None:
    storage = config("storage")["properties"]
    assert storage["minimumTlsVersion"] == "TLS1_2" and storage["supportsHttpsTrafficOnly"] is True
    site = config("app")["properties"]
    assert site["httpsOnly"] is True
    assert site["siteConfig"]["minTlsVersion"] == "1.2" and site["siteConfig"]["ftpsState"] == "Disabled"
    assert config("auth")["properties"]["httpSettings"]["requireHttps"] is True


def test_easy_auth_guards_every_path_but_the_health_check() -> None:
    auth = config("auth")
    assert auth["parent"] == "app" and auth["name"] == "authsettingsV2"
    properties = auth["properties"]
    assert properties["platform"]["enabled"] is True
    validation = properties["globalValidation"]
    assert validation["requireAuthentication"] is True
    assert validation["unauthenticatedClientAction"] == "RedirectToLoginPage"
    assert validation["excludedPaths"] == ["/api/health"]
    # The approval link's code rides in the URL fragment; it must survive the sign-in redirect.
    assert properties["login"]["preserveUrlFragmentsForLogins"] is True
    assert properties["identityProviders"]["azureActiveDirectory"]["enabled"] is True


def test_role_assignments_are_the_three_documented_ones_on_their_own_resources() -> None:
    roles = template()["variables"]["roles"]["value"]
    assert roles == {
        "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    }
    assignments = {
        name: r["config"] for name, r in template()["resources"].items() if r["type"].endswith("/roleAssignments")
    }
    scopes = {name: assignment["scope"] for name, assignment in assignments.items()}
    assert scopes == {"blobOwner": "storage", "tableContributor": "storage", "metricsPublisher": "insights"}
    used = {json.dumps(a["properties"]["roleDefinitionId"]) for a in assignments.values()}
    assert all(any(role in expression for role in roles) for expression in used) and len(used) == 3
    assert all(a["properties"]["principalType"] == "ServicePrincipal" for a in assignments.values())


def test_every_app_setting_is_one_the_app_or_the_platform_reads() -> None:
    sample = json.loads((REPO / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    settings = set(app_settings())
    assert settings <= set(sample) | PLATFORM_SETTINGS, settings - set(sample) - PLATFORM_SETTINGS
    assert not settings & FLEX_REJECTS
    assert {"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "PUBLIC_BASE_URL", "NOTIFY_FROM"} <= settings


def test_the_runtime_is_the_projects_python() -> None:
    runtime = config("app")["properties"]["functionAppConfig"]["runtime"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert runtime["name"] == "python" and f">={runtime['version']}" in project


def test_the_parameters_file_matches_the_template() -> None:
    declared = template()["parameters"]
    given = json.loads((REPO / "infra" / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared)
    required = {name for name, p in declared.items() if p["default"] is None}
    assert required <= set(given)
