"""The flags `evaluate` and `predict` share: how a workdir's model scores the images."""

from absl import flags

from cxr_jax.evaluation import adaptation


def define(adapt_help: str) -> None:
  """--batch_size, --tta and --adapt; adapt_help says what adapting means to the command."""
  flags.DEFINE_integer("batch_size", None, "Inference batch size; default from the config.")
  flags.DEFINE_bool("tta", False, "Average the probabilities over small shifts and scales.")
  flags.DEFINE_enum("adapt", "none", list(adaptation.METHODS), adapt_help)
