"""``fcvc serve``: a captioning web service and page over an exported captioner (``.fcvc`` file).

``engine.py`` decodes uploads in worker processes, batches them and captions them (no HTTP);
``uploads.py`` streams a multipart body to a private folder under size and count limits; ``app.py`` is the
FastAPI application (routes, errors, token); ``page.html`` is the page served at ``/``. FastAPI, uvicorn and
python-multipart are the optional extra ``fcvc-pipeline[serve]``: only this room imports them.
"""
