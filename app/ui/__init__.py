"""The web UI (`potwatch serve`): the page, its handlers and the per-tab sessions."""
