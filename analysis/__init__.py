"""Figure commands that explain the losses, drawn from the same code that trains.

Every module is a command, `python -m analysis.<name> ... --out DIR`, that writes a PNG and the
data behind it (CSV or JSON), and a library function the demo and the report call:

  logit_curves      target logit and its d/dθ against θ for every margin (paper Fig. 4b)
  decision_margins  binary decision boundaries in the (θ1, θ2) plane and the margin width
  embeddings        features on the circle / sphere (or t-SNE) per loss, from trained runs
  angles            θ to the own class centre, between centres, of verification pairs, per step
  compare           training curves and verification accuracy of several runs on shared axes
  report            one HTML page with the figures of given runs and their configs
  toy_figures       trains the digits toy once per loss and writes the report (`make figures`)

Curves come from `arcface_jax.margins.get(...).target_logit`, features from the runs' own
checkpoints, so a figure can never disagree with what was trained.
"""
