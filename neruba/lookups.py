"""``field__any=[…]``: membership in a long list of values as one array parameter.

``field__in`` renders one placeholder per value; for the thousand ids of a billing batch that
is a statement psycopg parses anew every time (it caches only short statements) and
PostgreSQL plans anew for every list length. ``= ANY(%s)`` is one parameter and one plan.
Other databases get the plain ``IN`` list."""

from __future__ import annotations

from typing import Any

from django.db.models import Field, ForeignObject, Lookup


@ForeignObject.register_lookup
@Field.register_lookup
class AnyOf(Lookup):
    lookup_name = "any"
    prepare_rhs = False

    def _values(self, connection: Any) -> list[Any]:
        return [self.lhs.output_field.get_db_prep_value(v, connection) for v in self.rhs]

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = self._values(connection)
        if not values:
            return "1 = 0", []
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", [*lhs_params, *values]

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(%s)", [*lhs_params, self._values(connection)]
