"""The OpenAI-compatible images API, torch- and FastAPI-free: request models and their mapping
onto A1111 generation fields (params.py), uploaded images and masks (uploads.py), and OpenAI's
error body (errors.py). The routes live in webui_api/routes/openai_images.py.

Apps that speak OpenAI's images API (Open WebUI, LibreChat, the `openai` package) then use
this server unchanged; every request becomes an ordinary txt2img or img2img job.
"""
