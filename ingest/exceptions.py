from __future__ import annotations

from neruba.errors import Conflict, NerubaError


class MetricExists(Conflict):
    code = "metric_exists"
    message = "A metric with that code already exists."


class MalformedEnvelope(NerubaError):
    """The request as a whole is not an event, a ``{"events": [...]}`` batch or CloudEvents."""

    code = "malformed_request"
    http_status = 400
    message = "The request body is not a valid event or batch."


class TooManyEvents(NerubaError):
    code = "too_many_events"
    http_status = 400
    message = "The batch has more events than allowed."


class PayloadTooLarge(NerubaError):
    code = "payload_too_large"
    http_status = 413
    message = "The request body is larger than allowed."


class UnsupportedMediaType(NerubaError):
    code = "unsupported_media_type"
    http_status = 415
    message = (
        "Send application/json, application/cloudevents+json or application/cloudevents-batch+json."
    )


class RejectionNotReplayable(Conflict):
    code = "not_replayable"
    message = "This rejection cannot be replayed."


class ReplayFailed(NerubaError):
    """Raised by entry points (console, command) to report a replay that ran but still fails;
    the rejection was already updated and audited by the service."""

    code = "replay_failed"
    http_status = 422
    message = "The replayed item still fails."


class BackfillClosed(Conflict):
    code = "backfill_closed"
    message = "The backfill is closed: open a new one to load more history."


class EventAlreadyVoided(Conflict):
    code = "event_voided"
    message = "The event is already voided: nothing counts it any more."


class EventNotCorrectable(Conflict):
    code = "event_not_correctable"
    message = "This event cannot be corrected."


class ArchiveRefused(Conflict):
    code = "archive_refused"
    message = "This month cannot be archived."
