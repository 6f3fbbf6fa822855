"""The demo page: pick a model, drop a photo, see who is in it (Gradio, over `arcface_jax.faces`).

    python -m arcface_jax.app --model runs/mine [--model mobile.jax_export] [--gallery G]
    python -m arcface_jax.app          # the embedded demo (`make app`): no download needed

Modules: `service` (what each tab does, and the messages for bad input), `views` (the drawn
photo, tables and the gallery's embedding map), `page` (the Gradio layout), `default` (the
embedded demo model and gallery), `__main__` (the command line).
"""
