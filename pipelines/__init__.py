"""The pipeline: declared once (definition.py), compiled for KFP and SageMaker, run locally with kfp.local."""
