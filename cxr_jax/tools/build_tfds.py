"""Builds (or checks and reuses) the `chest_xray_pneumonia` TFDS dataset.

  python -m cxr_jax.tools.build_tfds --manual_dir=data/chest_xray --data_dir=data/tensorflow_datasets
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from cxr_jax.data import splits
from cxr_jax.data import tfds_builder
from cxr_jax.tools import startup

flags.DEFINE_string("manual_dir", "data/chest_xray",
                    "Kaggle folder with train/, test/ and optionally val/.")
flags.DEFINE_string("data_dir", tfds_builder.DEFAULT_TFDS_DATA_DIR, "Where the built dataset goes.")
flags.DEFINE_bool("overwrite", False, "Delete and rebuild an existing built dataset.")
flags.DEFINE_float("val_fraction", splits.DEFAULT_VAL_FRACTION,
                   "Validation fraction; a non-default one builds a config of its own.")
flags.DEFINE_integer("split_seed", splits.DEFAULT_SPLIT_SEED,
                     "Split seed; a non-default one builds a config of its own.")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  tfds_builder.tfds.disable_progress_bar()
  config = None
  if (FLAGS.val_fraction, FLAGS.split_seed) != (splits.DEFAULT_VAL_FRACTION,
                                                splits.DEFAULT_SPLIT_SEED):
    config = tfds_builder.ChestXrayPneumoniaConfig(
        name=f"val{FLAGS.val_fraction:g}_seed{FLAGS.split_seed}",
        val_fraction=FLAGS.val_fraction, split_seed=FLAGS.split_seed)
  builder = tfds_builder.build(FLAGS.manual_dir, FLAGS.data_dir, overwrite=FLAGS.overwrite,
                               config=config)
  if getattr(builder, "build_seconds", None) is None:  # A build already printed its summary.
    print(f"Reused (source files unchanged): {tfds_builder.build_summary(builder)}")


if __name__ == "__main__":
  startup.run(main)
