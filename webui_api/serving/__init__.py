"""Production serving around the A1111 routes: API keys, rate limits, result cache, request
guards, metrics, audit log and the shutdown/readiness state.

Nothing here imports torch or the engine; every piece is built once per app (no module state)
and reached through `app.state` or `Runtime`.
"""
