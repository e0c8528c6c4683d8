"""A real local Kubernetes (etcd + kube-apiserver + controllers + scheduler,
v1.20.2) and a node agent that runs pods as local processes. See cluster.py."""
