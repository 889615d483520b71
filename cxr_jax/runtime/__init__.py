"""How a process of the project runs, below everything else in the import order.

  faults           named kill points for the resume tests (inert unless CXR_JAX_KILL_AT is set)
  onnx_logs        onnx_ir's warning about jax2onnx's untyped shape tensors, dropped
  progress         progress bars and progress lines for long work
  stderr_redirect  file descriptor 2 pointed elsewhere for a while (tensorstore's noise)
  summaries        TensorBoard scalars written without TensorFlow
  tf_import        TensorFlow imported quietly, once; the LiteRT interpreter started quietly
"""
