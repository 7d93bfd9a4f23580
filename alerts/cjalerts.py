"""The alerts of the cj-health-exporter rule pack, one spec each, in the order the pack lists them.

Add an alert (the whole recipe; nothing else in the repository lists alerts):

1. Its spec, here, in its group: `batches.problem(...)` for a problem kind of
   exporter/vocabulary.py (the kind gives the alert's name and severity), otherwise
   `@<group>.alert(...)` on a function that yields its rule(s). Beside it: a comment saying why,
   its thresholds (`thresholds={"for": "5m", ...}`; a deployment may override them in
   alerts/params.yml `overrides`), the title of the dashboard panel its `dashboard_url` opens,
   and whether it is per batch (batch dashboard, keep_firing_for) or not (overview).
2. Its runbook, docs/runbooks/<AlertName>.md (Meaning, Impact, Confirm, Investigate, Remediate,
   Escalate).
3. Its promtool cases in alerts/tests/*.test.yml: one where it fires (each severity it has) and
   one where it stays silent (just under its threshold or its `for`).
4. `python alerts/generate.py`: rewrites alerts/cj-batch-health.rules.yml and the alert table of
   docs/runbooks/README.md. tests/unit/test_alert_specs.py fails while 2 or 3 is missing.

A spec never spells its links: generate.py adds `runbook_url` and `dashboard_url` to every rule in
one pass at the end (kubernetes-mixin's add-runbook-links.libsonnet does this for runbooks).
Selectors, replica labels and link bases are the deployment's (alerts/params.yml). The rules use
only the metrics and labels of docs/metrics.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from exporter.vocabulary import OUTCOMES, PROBLEM_KINDS, PROBLEMS

SEVERITIES = ("critical", "warning", "info")
# A threshold's default: a Prometheus duration ("5m"), a positive count, or a list of names.
Value = str | int | tuple[str, ...]
_DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                          r"(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


class ParamsError(ValueError):
    """The parameters (or a threshold override) are invalid; the message says where."""


def duration_seconds(value: object, where: str) -> float:
    """Seconds of a Prometheus duration string ("1h30m"); raises ParamsError when invalid."""
    text = str(value)
    match = _DURATION_RE.match(text)
    if not isinstance(value, str) or not text or match is None or not any(match.groups()):
        raise ParamsError(f"{where}: {value!r} is not a Prometheus duration such as 90s, 5m or 1h")
    return sum(int(g) * unit for g, unit in zip(match.groups(), _DURATION_UNITS, strict=True) if g)


def seconds_literal(seconds: float) -> str:
    """A number for a PromQL comparison: 3600, not 3600.0."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


def is_for(key: str) -> bool:
    """Thresholds named `for` or `<tier>_for` are `for:` durations (`--for` overrides them)."""
    return key == "for" or key.endswith("_for")


# --------------------------------------------------------------------------------------------
# What a spec reads: the deployment (alerts/params.yml) and its own thresholds


@dataclass(frozen=True)
class Deployment:
    selector: str  # {job="...", <extra_selector>}
    replica_labels: str  # "instance, pod": aggregated away, one alert per batch, not per replica
    upstream_batch_timeout: str  # only quoted in descriptions


class Thresholds:
    """One spec's thresholds: its defaults with the deployment's overrides, typed on read."""

    def __init__(self, alert: str, values: Mapping[str, Value]) -> None:
        self._alert, self._values = alert, dict(values)

    def _get(self, key: str) -> Value:
        return self._values[key]

    def duration(self, key: str) -> str:
        """A duration as written ("1h"), for `for:` and descriptions."""
        value = self._get(key)
        duration_seconds(value, f"{self._alert}.{key}")
        return str(value)

    def seconds(self, key: str) -> str:
        """A duration as a PromQL number of seconds ("3600")."""
        return seconds_literal(duration_seconds(self._get(key), f"{self._alert}.{key}"))

    def count(self, key: str) -> int:
        value = self._get(key)
        assert isinstance(value, int)
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        assert isinstance(value, tuple)
        return value


@dataclass(frozen=True)
class Context:
    d: Deployment
    t: Thresholds


@dataclass(frozen=True)
class Rule:
    """One alerting rule of a spec; a spec with tiers (warning, then critical) yields several."""

    expr: str
    severity: str
    for_: str  # a duration; "0s" leaves `for:` out
    summary: str  # static, ends with a period
    description: str  # templated: names the batch and the figure ($value)


Record = dict[str, str]  # a recording rule: {"record": name, "expr": PromQL}
RuleFn = Callable[[Context], Iterable[Rule]]
Text = str | Callable[[Context], str]


@dataclass(frozen=True)
class AlertSpec:
    name: str
    panel: str  # title of the dashboard panel its dashboard_url opens (ids read from the JSON)
    per_batch: bool  # batch dashboard on its batch and keep_firing_for; else the overview
    thresholds: Mapping[str, Value]
    rules: RuleFn
    problem: str | None = None  # the problem kind of exporter/vocabulary.py it alerts on
    records: Callable[[Context], Iterable[Record]] = lambda c: ()  # recordings of its own


@dataclass
class Group:
    """A rule group: its shared recording rules, then its specs' recordings, then the alerts."""

    name: str
    records: Callable[[Deployment], list[Record]]
    specs: list[AlertSpec] = field(default_factory=list)

    def alert(self, name: str, *, panel: str, per_batch: bool, thresholds: Mapping[str, Value],
              records: Callable[[Context], Iterable[Record]] | None = None,
              ) -> Callable[[RuleFn], RuleFn]:
        """Declare the alert whose rules the decorated function yields."""
        def register(fn: RuleFn) -> RuleFn:
            self.specs.append(AlertSpec(name, panel, per_batch, dict(thresholds), fn,
                                        records=records or (lambda c: ())))
            return fn
        return register

    def problem(self, label: str, figure: str, *, panel: str, thresholds: Mapping[str, Value],
                summary: str, description: Text) -> None:
        """The alert of a problem kind: cj_batch_problem{problem=<label>}, valued by `figure`.

        Name and severity are the kind's (exporter/vocabulary.py PROBLEM_KINDS)."""
        kind = PROBLEMS[label]

        def rules(c: Context) -> Iterator[Rule]:
            text = description(c) if callable(description) else description
            yield Rule(_problem_expr(figure, label), kind.severity, c.t.duration("for"), summary,
                       text)

        self.specs.append(AlertSpec(kind.alert, panel, True, dict(thresholds), rules, label))


def _problem_expr(figure: str, problem: str) -> str:
    # The figure is one series per batch; joined onto cj_batch_problem (which carries
    # bos_batch_id) the alert has the labels of the problem series and the value of the figure.
    return (f"{figure}\n"
            f"* ignoring (bos_batch_id, problem) group_right\n"
            f'cj_batch_id:cj_batch_problem:max{{problem="{problem}"}}')


def _max(record: str, metric: str) -> Callable[[Deployment], Record]:
    """`record` = the metric with the replica labels aggregated away (one series per batch)."""
    return lambda d: {"record": record,
                      "expr": f"max without ({d.replica_labels}) ({metric}{d.selector})"}


BATCH = "CJ batch {{ $labels.cj_batch_id }} (BOS batch {{ $labels.bos_batch_id }})"
# Seconds since the batch's last activity, one series per batch (the value of most problem alerts)
AGE = "min without (cj_state, upload_status) (cj_batch_id:cj_batch_last_activity_age_seconds:min)"
WEDGED = PROBLEMS["wedged"].label


# ============================================================================================
# cj-batch-health.batches


def _batch_records(d: Deployment) -> list[Record]:
    return [
        _max("cj_batch_id:cj_batch_problem:max", "cj_batch_problem")(d),
        {"record": "cj_batch_id:cj_batch_last_activity_age_seconds:min",
         "expr": f"time() - max without ({d.replica_labels}) "
                 f"(cj_batch_last_activity_timestamp_seconds{d.selector})"},
        _max("cj_batch_id:cj_batch_comparisons:max", "cj_batch_comparisons")(d),
        _max("cj_batch_id:cj_batch_anchors:max", "cj_batch_anchors")(d),
        _max("cj_batch_id:cj_batch_anchor_mismatches:max", "cj_batch_anchor_mismatches")(d),
        _max("cj_batch_id:cj_batch_completion_events:max", "cj_batch_completion_events")(d),
        _max("cj_batch_id:cj_batch_completion_event_burst:max",
             "cj_batch_completion_event_burst")(d),
        _max("cj_batch_id:cj_batch_anchor_grade_resolution:max",
             "cj_batch_anchor_grade_resolution")(d),
        _max("job_problem:cj_batches_problem:max", "cj_batches_problem")(d),
    ]


batches = Group("cj-batch-health.batches", _batch_records)

# Batch 20: COMPLETE_STABLE + WAITING_CALLBACKS, or all callbacks in and never finalized. The
# upstream completion sweep runs every 5 minutes: two sweeps missed is a wedge, not a race.
batches.problem(
    "wedged", AGE, panel="Problems", thresholds={"for": "10m"},
    summary="A CJ batch is wedged and will never finish on its own.",
    description=f"{BATCH} is wedged: its upload status and state disagree, or all comparison "
                "callbacks are in but it was never finalized. No activity for "
                "{{ $value | humanizeDuration }}; the customer gets no result until it is "
                "re-finalized.")

# A failed finalize_scoring leaves the batch in SCORING and nothing upstream retries it. Scoring
# itself takes seconds.
batches.problem(
    "stuck_scoring", AGE, panel="State and status over time", thresholds={"for": "10m"},
    summary="A CJ batch is stuck in SCORING: its finalization failed and nothing retries it.",
    description=f"{BATCH} has been in state SCORING for {{{{ $value | humanizeDuration }}}}. "
                "Scoring takes seconds; upstream never retries a failed finalize_scoring, so the "
                "batch stays here until it is re-finalized.")


# No callback for `<tier>_idle` while comparisons are pending. LLM callbacks normally arrive within
# minutes; provider batch APIs can take longer, hence a ticket first and a page well before the
# upstream monitor's 4 h timeout fails the batch.
@batches.alert("CJBatchStuckWaitingCallbacks", panel="Comparisons", per_batch=True,
               thresholds={"warning_idle": "1h", "warning_for": "5m",
                           "critical_idle": "2h", "critical_for": "5m"})
def _stuck_waiting_callbacks(c: Context) -> Iterator[Rule]:
    for tier in ("warning", "critical"):
        yield Rule(
            f"min without (cj_state, upload_status) (\n"
            f"  cj_batch_id:cj_batch_last_activity_age_seconds:min"
            f'{{cj_state="WAITING_CALLBACKS"}}\n'
            f") > {c.t.seconds(f'{tier}_idle')}\n"
            f"and ignoring (bos_batch_id, kind)\n"
            f'cj_batch_id:cj_batch_comparisons:max{{kind="pending"}} > 0',
            tier, c.t.duration(f"{tier}_for"),
            "A CJ batch has waited too long for its LLM comparison callbacks.",
            f"{BATCH} is in WAITING_CALLBACKS with comparisons pending and has had no callback "
            f"for {{{{ $value | humanizeDuration }}}} (threshold "
            f"{c.t.duration(f'{tier}_idle')}). The upstream monitor forces or fails it after "
            f"{c.d.upstream_batch_timeout} without activity.")


# Projectable (anchors with >= 2 grades and students) but finished with 0 grade projections.
batches.problem(
    "missing_projections",
    "max without (source) (cj_batch_id:cj_batch_anchors:max{source=\"metadata\"})",
    panel="Grade projections", thresholds={"for": "5m"},
    summary="A CJ batch completed without grade projections although it has graded anchors.",
    description=f"{BATCH} is complete with 0 grade projections although it has "
                "{{ $value | humanize }} anchor essays (by metadata) with at least 2 grades: "
                "its students got no grades.")

# is_anchor column disagrees with the metadata flag: scoring and projection read the column.
batches.problem(
    "anchor_mismatch", "cj_batch_id:cj_batch_anchor_mismatches:max", panel="Anchors",
    thresholds={"for": "5m"},
    summary="Essays of a CJ batch have an is_anchor column that disagrees with their metadata.",
    description=f"{BATCH} has {{{{ $value | humanize }}}} essays whose is_anchor column "
                "disagrees with their processing_metadata. Scoring and grade projection read the "
                "column: unless it is fixed before finalization, the batch gets no grades.")

# More than one completion event for one CJ batch (a second result alone is a correction, R3:
# it replaces a wrong result in RAS, as the finalizer's healing of a Batch 20 does).
batches.problem(
    "duplicate_completion",
    "max without (event) (cj_batch_id:cj_batch_completion_events:max{event=\"completed\"})",
    panel="Outbox events for this batch", thresholds={"for": "5m"},
    summary="A CJ batch published its completion events more than once.",
    description=f"{BATCH} has {{{{ $value | humanize }}}} completion events in the outbox "
                "(expected 1). Downstream services may act on its completion twice.")


# More than `burst` completion events of one batch within 60 s (the seed's loop wrote 83 in 6 s).
# A historical fact of the outbox, not a flapping signal: no `for`.
@batches.alert("CJCompletionEventRunaway", panel="Outbox events for this batch", per_batch=True,
               thresholds={"burst": 3, "for": "0s"})
def _completion_event_runaway(c: Context) -> Iterator[Rule]:
    burst = c.t.count("burst")
    yield Rule(
        f"(cj_batch_id:cj_batch_completion_event_burst:max > {burst})\n"
        f"* ignoring (bos_batch_id) group_right\n"
        f'group without (event) (cj_batch_id:cj_batch_completion_events:max'
        f'{{event="completed"}})',
        "critical", c.t.duration("for"),
        "A CJ batch wrote completion events in a loop.",
        f"{BATCH} wrote {{{{ $value | humanize }}}} completion events within 60 seconds "
        f"(threshold {burst}): a finalization loop. Every loop may publish results and charge "
        "the customer again.")


# More than one resource-consumption event names the run (data.processing_id = the CJ batch
# id): a double charge. Charges are never counted per BOS batch: a legitimate re-run of the BOS
# batch is charged once itself.
batches.problem(
    "duplicate_charge",
    "max without (event) (cj_batch_id:cj_batch_completion_events:max{event=\"resource\"})",
    panel="Result and charges", thresholds={"for": "5m"},
    summary="A customer is charged more than once for a CJ run.",
    description=f"{BATCH} has {{{{ $value | humanize }}}} resource-consumption events naming "
                "it (at most 1 is allowed). Entitlements charged the customer for each one; "
                "`cj-health-exporter charges` lists the excess to refund by hand.")

# FAILED (monitor < 80 % path) or COMPLETED with a non-terminal upload status.
batches.problem(
    "inconsistent_state", AGE, panel="State and status over time", thresholds={"for": "15m"},
    summary="A CJ batch's state and upload status disagree.",
    description=f"{BATCH} is FAILED or COMPLETED but its upload status is not terminal (last "
                "activity {{ $value | humanizeDuration }} ago). Everything that reads "
                "cj_batch_uploads.status sees it still running.")

# In flight without total_budget (the monitor sees 0 %), or without the state documents a
# continuation needs to keep the budget or overrides the request asked for. A NULL document
# alone is harmless (pre-ADR-0020 batches: upstream uses its default budget) and never flagged.
batches.problem(
    "metadata_incomplete", AGE, panel="Progress", thresholds={"for": "15m"},
    summary="An in-flight CJ batch lacks metadata that changes what upstream does with it.",
    description=lambda c: (
        f"{BATCH} is waiting for callbacks without total_budget, or its state row lacks the "
        "original_request / comparison_budget that would give a continuation the budget or "
        "overrides its request asked for (last activity {{ $value | humanizeDuration }} ago). "
        "Without a budget the upstream monitor counts it as 0 % done and fails it after "
        f"{c.d.upstream_batch_timeout}."))

# --- what the upstream service's own batches showed (issue 11) -------------------------------

# The last result event is not what finalization would publish now (Batch 20's all-"U" result
# without assignment_id). RAS is last-writer-wins: only a corrected result heals it. A result
# is written once at finalization: 5m is only against a poll between the three outbox inserts.
batches.problem(
    "wrong_result", AGE, panel="Result and charges", thresholds={"for": "5m"},
    summary="The result a CJ batch published is wrong: RAS shows teachers wrong grades.",
    description=f"{BATCH} published a result event that differs from what finalization would "
                "publish now (no assignment_id while the upload has one, every student \"U\" "
                "although its anchors are usable, or grades unlike its projections). RAS keeps "
                "it until a corrected result is published; last activity "
                "{{ $value | humanizeDuration }} ago.")

# A re-run of the BOS batch moved this run's essays (cj_processed_essays is keyed by
# els_essay_id alone). Nothing to heal, never to rescore; its extra charges need a refund.
batches.problem(
    "superseded", AGE, panel="Problems", thresholds={"for": "15m"},
    summary="A CJ run was superseded by a newer run of its BOS batch.",
    description=f"{BATCH} has no essays left: a newer run of the same BOS batch owns them. Do "
                "not re-finalize it (it would score an empty batch); close it and refund any "
                "charge beyond one (`cj-health-exporter charges`). Last activity "
                "{{ $value | humanizeDuration }} ago.")

# A completion event without a result: the three outbox rows are separate transactions, so
# for a second or two this is the normal order of writes; 5m is far beyond that.
batches.problem(
    "completion_without_result",
    "max without (event) (cj_batch_id:cj_batch_completion_events:max{event=\"completed\"})",
    panel="Outbox events for this batch", thresholds={"for": "5m"},
    summary="A CJ batch published its completion but no result.",
    description=f"{BATCH} has {{{{ $value | humanize }}}} completion event(s) and no result "
                "event: ELS and BOS consider the assessment done while the Result Aggregator "
                "never heard of it, so teachers see no result.")

# Finalization began and no resource-consumption event names the run. Finalizing writes the
# charge seconds after the completion; an unbilled run (user_id NULL) stays unbilled.
batches.problem(
    "unbilled", AGE, panel="Result and charges", thresholds={"for": "30m"},
    summary="A finalized CJ run was never charged.",
    description=f"{BATCH} reached finalization but no resource-consumption event names it: "
                "nobody was charged (upstream cannot charge a run without user_id). Last "
                "activity {{ $value | humanizeDuration }} ago.")

# Projections on a scale whose grades the consumers' letter_grade pattern rejects (ENG5
# national 1-9): no result can be published until upstream's contract allows them.
batches.problem(
    "unpublishable_result", AGE, panel="Grade projections", thresholds={"for": "15m"},
    summary="A CJ batch has grades no valid result event can carry.",
    description=f"{BATCH} has grade projections the consumers' letter_grade pattern rejects "
                "(e.g. the ENG5 national scale's 1-9): a result event with them is dropped as "
                "a poison pill, so the batch cannot be delivered. A person decides; last "
                "activity {{ $value | humanizeDuration }} ago.")

# --- the invariants of the metadata-persistence work (issue 16) --------------------------------

# comparison_budget.source against the stored original_request, or a budget a continuation
# changed. Never on a pre-ADR-0020 batch (NULL state metadata).
batches.problem(
    "budget_source_flip", AGE, panel="Budget and partial scoring", thresholds={"for": "15m"},
    summary="A CJ batch's comparison budget source broke its invariant.",
    description=f"{BATCH}: comparison_budget.source disagrees with the stored original_request "
                "(or a continuation changed the budget the first submission fixed), so the "
                "batch does not run with the budget it was given; `inspect` says which. Last "
                "activity {{ $value | humanizeDuration }} ago.")

# original_request on the upload vs on the state row (what continuations rehydrate from).
batches.problem(
    "rehydration_mismatch", AGE, panel="Problems", thresholds={"for": "15m"},
    summary="A CJ batch's stored request differs between the upload and the state row.",
    description=f"{BATCH}: the upload's and the state row's original_request disagree on "
                "identity, budget or override fields; every continuation rehydrates the state "
                "row's copy. `inspect` names the fields. Last activity "
                "{{ $value | humanizeDuration }} ago.")

# Anchors no tier of the projector's lookup resolves: skipped silently upstream.
batches.problem(
    "anchor_grade_unresolved",
    "max without (tier) (cj_batch_id:cj_batch_anchor_grade_resolution:max"
    "{tier=\"unresolved\"})",
    panel="Anchor grade resolution", thresholds={"for": "5m"},
    summary="Anchors of a CJ batch have no grade the projector can resolve.",
    description=f"{BATCH} has {{{{ $value | humanize }}}} anchor(s) whose grade none of "
                "anchor_grade, known_grade, text_storage_id or anchor_ref_id resolves: the "
                "projector skips them, and without 2 graded anchors the batch gets no grades.")


# --- what the monitor cannot read (issue 12) ----------------------------------------------------

UNREADABLE = "cj_batch_id:cj_batch_unreadable_documents:max"


def _unreadable_records(c: Context) -> Iterator[Record]:
    yield _max(UNREADABLE, "cj_batch_unreadable_documents")(c.d)


# JSON documents of the batch PostgreSQL stores but cannot read (a \u0000 or lone-surrogate
# escape, or nesting too deep; docs/metrics.md "Unreadable documents"): the view reads them as
# no facts, so the batch's problems may be missing or wrong. A stored document does not change
# between polls; `for` only rides out a poll that races the write of a fixed copy. The series has
# no bos_batch_id: it comes from cj_batch_completion_events, which every exported batch has (its
# counts are never NULL, unlike the last activity of a batch without a state row).
@batches.alert("CJBatchDocumentsUnreadable", panel="Unreadable documents", per_batch=True,
               thresholds={"for": "5m"}, records=_unreadable_records)
def _documents_unreadable(c: Context) -> Iterator[Rule]:
    yield Rule(
        f"({UNREADABLE} > 0)\n"
        f"* ignoring (bos_batch_id) group_right\n"
        f"group without (event) (cj_batch_id:cj_batch_completion_events:max)",
        "warning", c.t.duration("for"),
        "A CJ batch has JSON documents PostgreSQL cannot read: its health is unknown.",
        f"{BATCH} has {{{{ $value | humanize }}}} JSON document(s) that PostgreSQL stores but "
        "cannot read (a \\u0000 or lone-surrogate escape, or nesting too deep). The facts they "
        "hold are unknown, so its problems may be missing or wrong; `cj-health-exporter "
        "inspect {{ $labels.cj_batch_id }}` names the kinds.")


# More than `batches` batches wedged at once is one systemic fault, not N incidents: one page
# (Alertmanager inhibits the per-batch CJBatchWedged pages meanwhile). Keep `batches` equal to the
# finalizer's remediation.max_wedged_for_auto (default 5), above which it refuses to act.
@batches.alert("CJManyBatchesWedged", panel="Wedged batches", per_batch=False,
               thresholds={"batches": 5, "for": "10m"})
def _many_batches_wedged(c: Context) -> Iterator[Rule]:
    limit = c.t.count("batches")
    yield Rule(
        f'job_problem:cj_batches_problem:max{{problem="{WEDGED}"}} > {limit}',
        "critical", c.t.duration("for"),
        "Many CJ batches are wedged at once: a systemic fault.",
        "{{ $value | humanize }} CJ batches are wedged at once (job {{ $labels.job }}, "
        f"threshold {limit}). One cause (the CJ service's monitor or callback workers, a bad "
        "deploy) is breaking them all: find it before healing batches; the finalizer does not "
        "act above its max_wedged_for_auto either.")


# ============================================================================================
# cj-batch-health.outbox


def _outbox_records(d: Deployment) -> list[Record]:
    return [
        _max("job:cj_outbox_unpublished_events:max", "cj_outbox_unpublished_events")(d),
        _max("job:cj_outbox_failed_events:max", "cj_outbox_failed_events")(d),
        {"record": "job:cj_outbox_oldest_unpublished_age_seconds:min",
         "expr": f"min without ({d.replica_labels}) "
                 f"(cj_outbox_oldest_unpublished_age_seconds{d.selector})"},
    ]


outbox = Group("cj-batch-health.outbox", _outbox_records)


# Oldest unpublished outbox row older than `<tier>_oldest_age` while rows the relay has not given
# up on are waiting. The relay normally publishes within seconds.
@outbox.alert("CJOutboxBacklog", panel="Oldest unpublished outbox event", per_batch=False,
              thresholds={"warning_oldest_age": "10m", "warning_for": "5m",
                          "critical_oldest_age": "30m", "critical_for": "5m"})
def _outbox_backlog(c: Context) -> Iterator[Rule]:
    for tier in ("warning", "critical"):
        yield Rule(
            f"job:cj_outbox_oldest_unpublished_age_seconds:min > "
            f"{c.t.seconds(f'{tier}_oldest_age')}\n"
            f"and\n"
            f"(job:cj_outbox_unpublished_events:max - job:cj_outbox_failed_events:max) > 0",
            tier, c.t.duration(f"{tier}_for"),
            "CJ outbox events are not being published.",
            "The oldest unpublished event in the CJ outbox is {{ $value | humanizeDuration }} "
            f"old (threshold {c.t.duration(f'{tier}_oldest_age')}) and events the relay still "
            "retries keep waiting (job {{ $labels.job }}). Results and completion notices of CJ "
            "batches are not reaching Kafka.")


# Unpublished rows with retry_count >= 5: the relay gave up, they are never delivered.
@outbox.alert("CJOutboxEventsFailed", panel="Failed outbox events", per_batch=False,
              thresholds={"for": "5m"})
def _outbox_events_failed(c: Context) -> Iterator[Rule]:
    yield Rule(
        "job:cj_outbox_failed_events:max > 0", "critical", c.t.duration("for"),
        "CJ outbox events failed permanently and will never be delivered.",
        "{{ $value | humanize }} CJ outbox events were given up after 5 publish attempts (job "
        "{{ $labels.job }}). Their batches' results never reach downstream services until "
        "someone replays them, and the relay re-reads them on every poll.")


# ============================================================================================
# cj-health-exporter


def _exporter_records(d: Deployment) -> list[Record]:
    return [
        _max("job:cj_health_up:max", "cj_health_up")(d),
        _max("job:cj_health_last_success_timestamp_seconds:max",
             "cj_health_last_success_timestamp_seconds")(d),
        _max("job:cj_health_batches_dropped:max", "cj_health_batches_dropped")(d),
    ]


exporter = Group("cj-health-exporter", _exporter_records)


# No target of the job (absent) or every replica down: critical after `for`. One replica of
# several down: a warning after `replica_for`. absent() keeps the job label of its selector, so
# routing and inhibition still see it.
@exporter.alert("CJHealthExporterDown", panel="Exporter up", per_batch=False,
                thresholds={"for": "5m", "replica_for": "15m"})
def _exporter_down(c: Context) -> Iterator[Rule]:
    up, r = f"up{c.d.selector}", c.d.replica_labels
    yield Rule(
        f"absent({up})\nor\nmax without ({r}) ({up}) == 0", "critical", c.t.duration("for"),
        "cj-health-exporter is down: CJ batch health is not monitored.",
        "{{ if eq $value 1.0 }}Prometheus has no target of job {{ $labels.job }}{{ else }}No "
        "target of job {{ $labels.job }} can be scraped{{ end }}: cj-health-exporter is down or "
        "not scraped, so no CJ batch alert can fire.")
    yield Rule(
        f"({up} == 0)\nand ignoring ({r})\n(max without ({r}) ({up}) == 1)",
        "warning", c.t.duration("replica_for"),
        "A replica of cj-health-exporter is down; the others still export.",
        "Target {{ $labels.instance }} of job {{ $labels.job }} cannot be scraped. Another "
        "replica still exports, so alerts work, but the exporter is no longer redundant.")


# cj_health_up == 0 on every replica: the CJ database is unreachable or the poll query fails.
@exporter.alert("CJHealthPollFailing", panel="Poll errors by reason", per_batch=False,
                thresholds={"for": "5m"})
def _poll_failing(c: Context) -> Iterator[Rule]:
    yield Rule(
        "job:cj_health_up:max == 0", "critical", c.t.duration("for"),
        "cj-health-exporter cannot poll the CJ database.",
        "No replica of job {{ $labels.job }} can poll the CJ database (cj_health_up is 0 "
        "everywhere): the database is unreachable, too slow or the view fails. "
        "Per-batch series are withdrawn, so the CJ batch alerts are blind.")


# No successful poll for `age` (also catches a poll that hangs, where cj_health_up stays 1).
@exporter.alert("CJHealthPollStale", panel="Time since last successful poll", per_batch=False,
                thresholds={"age": "5m", "for": "1m"})
def _poll_stale(c: Context) -> Iterator[Rule]:
    yield Rule(
        f"time() - job:cj_health_last_success_timestamp_seconds:max > {c.t.seconds('age')}",
        "critical", c.t.duration("for"),
        "cj-health-exporter has not completed a poll recently.",
        "The last successful poll of job {{ $labels.job }} was "
        f"{{{{ $value | humanizeDuration }}}} ago (threshold {c.t.duration('age')}). Polls fail "
        "or hang; per-batch series are withdrawn, so the CJ batch alerts are blind.")


# Batches over max_batches are not exported, so the per-batch alerts cannot see them.
@exporter.alert("CJHealthBatchesDropped", panel="Exported and dropped batches", per_batch=False,
                thresholds={"for": "15m"})
def _batches_dropped(c: Context) -> Iterator[Rule]:
    yield Rule(
        "job:cj_health_batches_dropped:max > 0", "warning", c.t.duration("for"),
        "cj-health-exporter drops batches over its max_batches cap.",
        "{{ $value | humanize }} CJ batches are over max_batches and not exported by job "
        "{{ $labels.job }}: the per-batch alerts cannot see them.")


def _remediation_record(c: Context) -> str:
    return f"job_action_outcome:cj_health_remediations:increase{c.t.duration('window')}"


def _remediation_records(c: Context) -> Iterator[Record]:
    yield {"record": _remediation_record(c),
           "expr": f"sum without ({c.d.replica_labels}) (increase(cj_health_remediations_total"
                   f"{c.d.selector}[{c.t.duration('window')}]))"}


# A remediation of the finalizer ended with one of `outcomes` within `window`: `failed` (its
# transaction rolled back) or `needs_person` (it refused on purpose, e.g. anchors with fewer than
# 2 grades). The batch itself pages through its own alert. An increase over a window: no `for`.
@exporter.alert("CJHealthRemediationFailing", panel="Remediation actions", per_batch=False,
                thresholds={"window": "30m", "outcomes": ("failed", "needs_person")},
                records=_remediation_records)
def _remediation_failing(c: Context) -> Iterator[Rule]:
    outcomes = c.t.names("outcomes")
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown or not outcomes:
        raise ParamsError(f"CJHealthRemediationFailing.outcomes: {unknown or outcomes!r} are not"
                          f" remediation outcomes ({', '.join(OUTCOMES)})")
    window = c.t.duration("window")
    yield Rule(
        f'{_remediation_record(c)}{{outcome=~"{"|".join(outcomes)}"}} > 0', "warning", "0s",
        "Remediations of the finalizer fail or need a person.",
        f"{{{{ $value | humanize }}}} {{{{ $labels.action }}}} remediation(s) ended "
        f"{{{{ $labels.outcome }}}} in the last {window} (job {{{{ $labels.job }}}}). The "
        "batches they were meant to heal stay broken until a person acts; the audit table "
        "cj_health_remediations says why.")


# ============================================================================================

GROUPS = (batches, outbox, exporter)  # the order of the groups in the rule file


def specs() -> list[AlertSpec]:
    """Every spec, in the order of the rule file."""
    return [spec for group in GROUPS for spec in group.specs]


def check() -> None:
    """Each alert declared once; each problem kind of the vocabulary has its alert."""
    names = [s.name for s in specs()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParamsError(f"alerts declared twice in alerts/cjalerts.py: {twice}")
    covered = {s.problem for s in specs() if s.problem}
    missing = [k for k in PROBLEM_KINDS if k.label not in covered]
    if missing:
        raise ParamsError(
            "problem kinds without an alert spec (add `batches.problem(...)` to "
            f"alerts/cjalerts.py): {', '.join(f'{k.label} ({k.alert})' for k in missing)}")
