"""Data sources: the embedded digits set, CIFAR-format folders, ImageFolder trees, and resumable loaders."""
from hnas_fast.data.cifar import Cutout, cifar_transforms, load_cifar
from hnas_fast.data.digits import load_digits_dataset
from hnas_fast.data.folder import folder_transforms, load_image_folder
from hnas_fast.data.loaders import (
    DATASETS,
    ResumableSampler,
    make_final_loaders,
    make_search_loaders,
    open_dataset,
    sampler_of,
)

__all__ = [
    "DATASETS",
    "Cutout",
    "ResumableSampler",
    "cifar_transforms",
    "folder_transforms",
    "load_cifar",
    "load_digits_dataset",
    "load_image_folder",
    "make_final_loaders",
    "make_search_loaders",
    "open_dataset",
    "sampler_of",
]
