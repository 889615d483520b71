"""Evaluation: one `Predictor` for every model kind, one scoring function, what is fitted
on validation after training, calibration maths and Grad-CAM.

Modules: `predictor` (load_predictor(workdir) -> probabilities and features),
`inference` (padded, masked batches), `scoring` (score_set at fixed operating points),
`fit` (temperature and thresholds fitted on validation, cached in the workdir),
`evaluate` (a workdir on a folder), `metrics`, `calibration`, `gradcam`.
A new metric goes into `metrics.binary_metrics` (or `scoring.score_set` if it needs
more than one threshold), and every command and the report then show it.
"""
