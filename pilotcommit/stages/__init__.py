"""The stages of the pipeline: their keys, folders and validity (table.py), outputs written
whole (materialise.py), the reuse decision for a trained run (reuse.py), and where a flow writes
and tracks (context.py). Orchestration only: what a stage computes is pilotcommit/pipeline.py."""
