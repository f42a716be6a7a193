"""The pure planning of OAuth-only exceptions' authentication policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.model.auth_policy import (
    APP_POLICY_NAME,
    AuditedPolicyChange,
    AuthPolicies,
    PolicyAssignment,
    PolicyChange,
    PolicyReason,
)
from shared.model.exception_records import AuthMethod, ExceptionRecord, ExceptionStatus
from shared.sweep.oauth_only import confirmable_policies, oauth_only_guids, plan_oauth_only, plan_policy_undo, settle

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
APP = {"Name": APP_POLICY_NAME, "AllowBasicAuthSmtp": False}
STRICT = {"Name": "Strict", "AllowBasicAuthSmtp": False}
LEGACY = {"Name": "Legacy", "AllowBasicAuthSmtp": True}


def record(guid: str, auth: AuthMethod = AuthMethod.OAUTH, days: int = 10) -> ExceptionRecord:
    return ExceptionRecord(
        id=f"x-{guid}",
        mailbox_guid=guid,
        mailbox_address=f"{guid}@contoso.com",
        status=ExceptionStatus.APPROVED,
        expires_at=NOW + timedelta(days=days),
        reason="MFP",
        owner="",
        device="",
        auth_method=auth,
        approved_by="admin",
        approved_at=NOW - timedelta(days=1),
    )


def held(guid: str, previous: str = "", pending: str = "") -> PolicyAssignment:
    return PolicyAssignment(guid, f"{guid}@contoso.com", previous, NOW, "run-1", pending, "run-2" if pending else "")


def test_only_active_oauth_exceptions_are_wanted() -> None:
    exceptions = {"a": record("a"), "b": record("b", AuthMethod.BASIC), "c": record("c", days=-1)}
    assert oauth_only_guids(exceptions, NOW) == {"a"}


def test_assigns_where_nothing_blocks_and_keeps_what_already_blocks() -> None:
    policies = AuthPolicies((APP, STRICT, LEGACY), default="")
    current = {"none": "", "legacy": "Legacy", "strict": "Strict", "app": APP_POLICY_NAME.upper()}
    plan = plan_oauth_only(current, {}, {}, current, policies)
    assert [(c.guid, c.before, c.after, c.reason) for c in plan.changes] == [
        ("legacy", "Legacy", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY),
        ("none", "", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY),
    ]
    # The organisation's default blocks: a user without a policy of their own needs nothing.
    plan = plan_oauth_only({"none"}, {}, {}, {"none": ""}, AuthPolicies((APP, STRICT), default="Strict"))
    assert plan.changes == [] and not plan.missing_policy


def test_a_missing_or_allowing_app_policy_is_reported_and_nothing_planned() -> None:
    for policies in (AuthPolicies((LEGACY,)), AuthPolicies(({"Name": APP_POLICY_NAME, "AllowBasicAuthSmtp": True},))):
        plan = plan_oauth_only({"a"}, {}, {}, {"a": ""}, policies)
        assert plan.changes == [] and plan.missing_policy


def test_an_ended_exception_puts_back_the_previous_policy_only_over_the_apps() -> None:
    policies = AuthPolicies((APP, LEGACY))
    assignments = {"mine": held("mine", "Legacy"), "theirs": held("theirs", "")}
    current = {"mine": APP_POLICY_NAME, "theirs": "Legacy"}
    plan = plan_oauth_only(set(), {}, assignments, current, policies)
    assert [(c.guid, c.before, c.after, c.reason) for c in plan.changes] == [
        ("mine", APP_POLICY_NAME, "Legacy", PolicyReason.EXCEPTION_ENDED)
    ]
    assert plan.forget == ["theirs"] and any("theirs@contoso.com" in note for note in plan.notes)


def test_a_user_gone_from_exchange_is_left_alone() -> None:
    plan = plan_oauth_only({"gone"}, {"gone": "gone@contoso.com"}, {}, {}, AuthPolicies((APP,)))
    assert plan.changes == [] and plan.notes == ["gone@contoso.com: no such user in Exchange, left alone"]


def test_settle_records_what_a_dead_run_landed_and_drops_what_it_did_not() -> None:
    assignments = {
        "assigned": held("assigned", "Legacy", pending="assign"),
        "never-assigned": held("never-assigned", "", pending="assign"),
        "restored": held("restored", "Legacy", pending="restore"),
        "never-restored": held("never-restored", "Legacy", pending="restore"),
    }
    current = {
        "assigned": APP_POLICY_NAME,
        "never-assigned": "",
        "restored": "Legacy",
        "never-restored": APP_POLICY_NAME,
    }
    settled = settle(assignments, current)
    assert [(run, c.guid, c.before, c.after) for run, c in settled.recovered] == [
        ("run-2", "assigned", "Legacy", APP_POLICY_NAME),
        ("run-2", "restored", APP_POLICY_NAME, "Legacy"),
    ]
    assert sorted(settled.forget) == ["never-assigned", "restored"]
    assert [a.guid for a in settled.unpend] == ["never-restored"]
    assert sorted(settled.assignments) == ["assigned", "never-restored"]
    assert not any(a.pending for a in settled.assignments.values())


def test_undo_puts_back_only_where_the_run_still_holds() -> None:
    def row(guid: str, before: str, after: str) -> AuditedPolicyChange:
        return AuditedPolicyChange("run-1", NOW, f"{guid}@contoso.com", guid, before, after, "oauth-only", "app")

    rows = [row("kept", "Legacy", APP_POLICY_NAME), row("moved", "", APP_POLICY_NAME), row("gone", "", APP_POLICY_NAME)]
    undo, skipped = plan_policy_undo(rows, {"kept": APP_POLICY_NAME, "moved": "Strict"})
    assert [(c.guid, c.before, c.after, c.reason) for c in undo] == [
        ("kept", APP_POLICY_NAME, "Legacy", PolicyReason.UNDO)
    ]
    assert [r.mailbox_guid for r in skipped] == ["moved", "gone"]


def test_a_reviewed_policy_change_holds_only_when_planned_again_the_same() -> None:
    reviewed = [
        PolicyChange("a", "a@x", "", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY),
        PolicyChange("b", "b@x", "Legacy", APP_POLICY_NAME, PolicyReason.OAUTH_ONLY),
    ]
    now = [PolicyChange("a", "a@x", "", APP_POLICY_NAME.lower(), PolicyReason.OAUTH_ONLY)]
    still, dropped = confirmable_policies(reviewed, now)
    assert [c.guid for c in still] == ["a"] and [c.guid for c in dropped] == ["b"]
