"""Where events flow: settings, topics, the stage graph, the faust app, the local stack
and the `llmops` CLI. Read graph.py first."""
