"""Deep clustering on raw images: autoencoders + k-means, DEC / IDEC, and the other deep clusterers.

- :class:`~imgclust.deep.base.DeepEstimator`: the shared base (images in, embeddings / labels out, a torch
  artifact on disk).
- :class:`~imgclust.deep.autoencoder.AutoencoderClusterer`: ASCAE / SCAE / ConvAE + (UMAP) + k-means.
- :class:`~imgclust.deep.dec.DEC`: DEC (Xie et al., 2016, "Unsupervised Deep Embedding for Clustering
  Analysis") and IDEC (Guo et al., 2017, "Improved Deep Embedded Clustering with Local Structure
  Preservation") fine-tuning of a pretrained autoencoder.
- :mod:`imgclust.deep.methods`: build a method by name, load a saved one whatever its class.
- :class:`~imgclust.deep.training.TrainingConfig`: the training settings every deep estimator takes as
  ``training=`` (epochs / max_iter, batch_size, lr, seed, device, checkpoints).
- :mod:`imgclust.deep.training` (seeding, exact-resume checkpoints, the training loop),
  :mod:`imgclust.deep.networks`, :mod:`imgclust.deep.losses`: building blocks for other methods.
- :mod:`imgclust.deep.backbone`: a trained encoder as a ``deep:<folder>`` feature extractor, registered
  with :mod:`imgclust.extract.backbones` through the ``imgclust.backbones`` entry point.

This module only re-exports.
"""
from __future__ import annotations

from imgclust.deep.autoencoder import AutoencoderClusterer
from imgclust.deep.base import WEIGHTS_NAME, DeepEstimator
from imgclust.deep.dec import DEC
from imgclust.deep.training import TrainingConfig

__all__ = ["DeepEstimator", "AutoencoderClusterer", "DEC", "TrainingConfig", "WEIGHTS_NAME"]
