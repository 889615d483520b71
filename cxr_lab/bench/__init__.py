"""Benchmarks: how fast the project trains and scores, measured on this machine.

  recipe      the step `make train` runs, its validation pass and resume point, against
              the machine's measured compute and memory roofs and a Keras peer
  network     the classifier's train and inference steps at any width, the head phase
              on cached features, the evaluation pass, the two depthwise forms
  keras_peer  the same network in Keras (TensorFlow backend)
  pipeline    the input pipeline against training: is data the bottleneck?
  exported    exported files' latency and the out-of-distribution score's cost
  timing      timers, XLA's cost analysis, the machine's roofs, the environment
  suite       one run of all of them (what `python -m cxr_lab.tools.bench` prints)

Weights are random (drawn on the host from `jax.eval_shape(init)` shapes: XLA:CPU would
spend ~40 s compiling MobileNetV2's initialisers), which does not change the speed.
"""
