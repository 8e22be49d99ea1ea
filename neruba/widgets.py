"""Form widgets the console's forms share."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from neruba.models import Customer

# A few lines of plain JavaScript: suggestions from the console's customer lookup as you type,
# offered through the browser's own <datalist>, so the field stays a plain text box that works
# without scripts too.
_SCRIPT = """<script>(function () {
  var input = document.getElementById(%(id)s), list = document.getElementById(%(list)s), last = "";
  if (!input || !list) { return; }
  input.addEventListener("input", function () {
    var q = input.value.trim();
    if (!q || q === last) { return; }
    last = q;
    fetch(%(url)s + "?q=" + encodeURIComponent(q), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : {results: []}; })
      .then(function (data) {
        list.innerHTML = "";
        data.results.forEach(function (c) {
          var option = document.createElement("option");
          option.value = c.external_id;
          option.label = c.name + " (" + c.currency + ")";
          list.appendChild(option);
        });
      });
  });
})();</script>"""


class CustomerAutocomplete(forms.TextInput):
    """A text box for a customer's external id with suggestions as you type."""

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        attrs = dict(attrs or {})
        field_id = attrs.get("id") or f"id_{name}"
        list_id = f"{field_id}_options"
        attrs.update({"list": list_id, "autocomplete": "off", "placeholder": "external id"})
        if isinstance(value, int):
            # An initial value is the primary key: show the external id people know.
            found = Customer.objects.filter(pk=value).values_list("external_id", flat=True)
            value = found.first() or value
        box = super().render(name, value, attrs, renderer)
        try:
            url = reverse("customer-autocomplete")
        except NoReverseMatch:
            return box
        script = _SCRIPT % {
            "id": json.dumps(field_id),
            "list": json.dumps(list_id),
            "url": json.dumps(url),
        }
        return format_html('{}<datalist id="{}"></datalist>{}', box, list_id, SafeString(script))


class CustomerByExternalIdField(forms.ModelChoiceField):
    """A customer typed by external id (``hooli``), never the internal primary key."""

    widget = CustomerAutocomplete

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("queryset", Customer.objects.all())
        kwargs.setdefault("to_field_name", "external_id")
        kwargs.setdefault("help_text", "The customer's external id; suggestions as you type.")
        kwargs.setdefault(
            "error_messages",
            {
                "invalid_choice": "No customer with this external id. Check the spelling or "
                "create the customer first."
            },
        )
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, Customer):
            return value.external_id
        return super().prepare_value(value)
