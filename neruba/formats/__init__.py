"""Date formats for the console: one unambiguous format everywhere, with the zone shown."""
