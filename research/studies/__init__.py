"""The studies' reports: tables and plots that answer each experiment's question.

Each module holds one study's `report(workdir, trials, config)`, which an
experiment names in its config (`config.sweep.report =
"research.studies.freezing:report"`); the sweep runner calls it after the
trials. The generic sweep package (`research.sweep`) does not import these;
they take their shared table rules from it (`research.sweep.plateau`: a row
still improving at its last epoch is marked †).

  architectures  compare_architectures: accuracy against parameters and FLOPs
  autoencoder    autoencoder: reconstruction error and a linear probe of the code
  filters        filters_and_features: classic kernels, learned kernels, feature maps
  freezing       compare_freezing: transfer strategies against target-set size
"""
