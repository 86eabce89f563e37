"""NVIDIA Triton Inference Server as a second real server: installing it (install.py), the
model repository optdse writes per configuration (repository.py) and its own statistics
(stats.py). The model it runs is serving/triton_model.py."""
