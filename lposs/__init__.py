"""LPOSS and LPOSS+: training-free open-vocabulary segmentation by label propagation."""

__version__ = "0.1.0"
