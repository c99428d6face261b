#!/bin/sh
# SageMaker starts a training container as `<image> train`: this script is `train` on the train-cuda image's PATH.
# KFP components and the Kubeflow Trainer (torchrun) set their own command and never reach it.
set -eu
exec python -m pipelines.sagemaker_entry train "$@"
