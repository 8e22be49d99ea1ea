from __future__ import annotations

from neruba.errors import Conflict, NerubaError, NotFound


class PlanNotFound(NotFound):
    code = "plan_not_found"
    message = "No plan with that code."


class InvalidTiers(NerubaError):
    code = "invalid_tiers"
    message = "Graduated tiers must ascend, end with an open tier (up_to null) and have prices."


class SubscriptionOverlap(Conflict):
    code = "subscription_overlap"
    message = "The customer already has a subscription to this plan over that period."


class SubscriptionExternalIdTaken(Conflict):
    code = "subscription_external_id_taken"
    message = "Another subscription already has that external_id."


class CurrencyMismatch(NerubaError):
    code = "currency_mismatch"
    message = "The plan's currency differs from the customer's currency."


class InvoiceNotFound(NotFound):
    code = "invoice_not_found"
    message = "No invoice with that number."


class WindowNotFound(NotFound):
    code = "window_not_found"
    message = "No billing window matches."


class InvoiceStateInvalid(Conflict):
    code = "invoice_state_invalid"
    message = "The invoice is not in a state that allows this."


class ProviderError(NerubaError):
    code = "provider_error"
    http_status = 502
    message = "The payment provider refused or failed the request."


class FindingNotOpen(Conflict):
    code = "finding_not_open"
    message = "The drift finding is already resolved or ignored."


class ResolutionInvalid(Conflict):
    code = "resolution_invalid"
    message = "That resolution does not apply to this finding."


class CreditCurrencyMismatch(NerubaError):
    code = "credit_currency_mismatch"
    message = "A credit must be in the customer's currency."


class PaymentFindingNotOpen(Conflict):
    code = "payment_finding_not_open"
    message = "The payment finding is already closed."
