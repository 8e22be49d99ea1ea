from __future__ import annotations

from neruba.errors import Conflict, NerubaError, NotFound


class CustomerNotFound(NotFound):
    code = "customer_not_found"
    message = "No customer with that external id."


class CustomerExists(Conflict):
    code = "customer_exists"
    message = "A customer with that external id already exists."


class InvalidScopes(NerubaError):
    code = "invalid_scopes"
    message = "Scopes must be a non-empty subset of ingest, read, write."
