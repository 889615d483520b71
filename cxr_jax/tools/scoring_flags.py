"""The flags `evaluate` and `predict` share: which workdir's model scores the images, and how."""

from absl import flags

from cxr_jax.inference import adaptation


def define(adapt_help: str) -> None:
  """--workdir, --batch_size, --tta and --adapt; adapt_help says what adapting means to the
  command."""
  flags.DEFINE_string("workdir", None, "Trained workdir (config.json and the model).",
                      required=True)
  flags.DEFINE_integer("batch_size", None, "Inference batch size; default from the config.")
  flags.DEFINE_bool("tta", None, "Average the probabilities over small shifts and scales; "
                    "default: the workdir's config.tta.")
  flags.DEFINE_enum("adapt", adaptation.AUTO, list(adaptation.CHOICES), adapt_help)
