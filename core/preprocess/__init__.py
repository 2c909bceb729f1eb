"""Preprocessing applied before the networks: named image transforms and the organ rules they may use.

* ``transforms`` -- HU window, optional lung mask, resize; the chain of a model's config
* ``lung``       -- the threshold lung mask (an optional organ rule for chest tasks) and the
                    coverage check built on it

Importing this package does not import torch.
"""
