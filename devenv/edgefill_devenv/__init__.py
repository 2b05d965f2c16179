"""Development environment: the local Kubernetes cluster, the S3 test origin and
the synthetic catalogue. Used by tests, the demo and benchmarks, never by the
operator or the cache node themselves (an import-linter contract keeps it so).
"""
