"""Prefect flows of pilotcommit: thin wrappers that chain the library's stages as cached tasks.

- ``flows.compare.compare_flow``    every method x seed of one experiment, then the comparison
- ``flows.sweep.sweep_flow``        cells (models, mixes) x methods x seeds (deployment ``sweep/model-scale``)
- ``flows.nightly.nightly_regression_flow``  rerun + compare with the accepted MLflow baseline
- ``flows.train.train_flow``        one method x seed
- ``flows.evaluate.evaluate_flow``  one checkpoint on the evaluation sets
- ``flows.probe.probe_flow``        the pass-rate probe and each method's prediction

The tasks (each one library call) are in ``flows.tasks``, the Prefect UI's artifacts in
``flows.ui``; see docs/orchestration.md.
"""
