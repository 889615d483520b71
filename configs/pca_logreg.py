"""PCA + logistic regression on downsized grayscale pixels (scikit-learn).

  python launch.py --config=configs/pca_logreg.py --workdir=workdirs/pca_logreg
  python launch.py --config=configs/pca_logreg.py:debug

The inverse regularisation strength C is chosen from `c_grid` by validation F1.
"""

from configs import base


def get_config(variant=""):
  config = base.get_config()
  config.name = "pca_logreg"
  config.description = "PCA + logistic regression (64x64)"
  config.data.image_size = 64
  config.augment.enabled = False  # Not used: the pixels go straight to PCA.
  config.model.name = "pca_logreg"
  config.model.n_components = 100
  config.model.whiten = True
  config.model.c_grid = (0.001, 0.01, 0.1, 1.0)
  return base.apply_variant(config, variant)
