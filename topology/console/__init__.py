"""The web console, served by the analytics process (the one owner of the analytics
store) on its query service's address: overview, traces, dead letters, prompts, alerts.

The pages read through the same code as the CLI: the named queries of
`connectors.analytics` (those of `llmops report` and `llmops trace`, and the console's
own in `connectors/analytics/console.py`), the dead-letter topic through
`connectors.deadletters`, the prompt registry through `connectors.registry_log`. One
static HTML shell and plain JavaScript build every page from JSON with `textContent`
(never markup from data) under a Content-Security-Policy that runs scripts from this
origin only; charts are uPlot, vendored in static/vendor/ (no CDN, nothing fetched)."""

from topology.console.views import add_console

__all__ = ["add_console"]
