"""kt-cluster: distributed hyperparameter tuning for Keras on Kubernetes.

The package `kt_cluster` is the user-facing tool (`ktc`: cli, local launcher, status and results
views); `kt_cluster.core` is what the chief and the workers share, `kt_cluster.chief` the oracle
server and `kt_cluster.worker` the trial runner. The chief and the worker never import each other.
"""
