"""The generation layer: between the HTTP routes and the engine.

A route parses a request and shapes the answer; everything in between lives here: the
request's styles, infotext and guards (`prepare`), the cache lookup, one work item per request
whose single engine call returns everything the answer needs (`work`), queue submission at the
caller's priority, saving and the response with its infotexts (`outputs`), a named script's
fan-out (`scripts`) and the async task runner (`task_runner`). `runs` ties them together.
Synchronous routes, async tasks, the ControlNet endpoint and the built-in scripts all come
through here, so their images and infotexts are the same for the same request.

Importing this package imports nothing (no torch, no FastAPI).
"""
