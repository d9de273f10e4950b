"""``hybrid-serve``: an OpenAI-compatible multimodal API with continuous batching, and a chat page.

`engine` batches the sequences (`slots` holds their state), `app` speaks OpenAI's HTTP API,
`media` turns image and video parts into loader inputs, `metrics` counts for ``/metrics``.
"""
