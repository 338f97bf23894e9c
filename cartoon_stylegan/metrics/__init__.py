"""Evaluation: FID/KID/precision-recall (torch-fidelity + offline TF-Inception) and structure distance.

- :func:`compute_metrics` (``fid``, ``kid``, ``pr`` by short name, :data:`FIDELITY_METRICS`) on
  image Datasets: :class:`GeneratorDataset`, :class:`ShardImageDataset`, :class:`TensorImageDataset`,
  :class:`BatchFnDataset`; the reference side cached by shard-manifest key.
- :func:`structure_distance` / :func:`structure_scores`: how much source structure a variant keeps
  (descriptors by short name in :data:`STRUCTURE_METHODS`).
- :mod:`.inception`: the offline Inception registered with torch-fidelity as
  :data:`FEATURE_EXTRACTOR_NAME`.
"""

from .fidelity import (FIDELITY_METRICS, BatchFnDataset, GeneratorDataset, ShardImageDataset,
                       Ranks, TensorImageDataset, as_image_dataset, compute_metrics, manifest_key)
from .inception import FEATURE_EXTRACTOR_NAME, InceptionTFOffline, load_inception
from .structure import (STRUCTURE_METHODS, sample_pairs, structure_distance, structure_distance_matrix,
                        structure_scores)

__all__ = [
    "FIDELITY_METRICS", "BatchFnDataset", "GeneratorDataset", "ShardImageDataset", "TensorImageDataset",
    "as_image_dataset", "compute_metrics", "manifest_key", "Ranks",
    "FEATURE_EXTRACTOR_NAME", "InceptionTFOffline", "load_inception",
    "STRUCTURE_METHODS", "sample_pairs", "structure_distance", "structure_distance_matrix", "structure_scores",
]
