"""Command-line programs, each thin: flags, then one call into the library.

  python -m cxr_jax.tools.evaluate    a workdir on a labelled folder
  python -m cxr_jax.tools.predict     image files and folders to a CSV (+ Grad-CAM)
  python -m cxr_jax.tools.report      the comparison report (make report)
  python -m cxr_lab.tools.bench       speed: Flax vs Keras, pipeline, cached features
  python -m cxr_jax.tools.build_tfds  the chest_xray_pneumonia TFDS build
Training is `launch.py` at the top of the repository. Every command starts through
`startup.run`: malloc settings, logging, one-line errors (--verbose for tracebacks).
"""
