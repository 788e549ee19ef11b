"""Backends: what the array API cannot express (autodiff, parameters, kernels, devices,
distribution), one folder per framework with the same file and exported names."""
