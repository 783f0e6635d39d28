"""The sets image-text papers report: ImageNet-1k and CIFAR zero-shot, a few fine-grained
classification sets (zero-shot and linear probes), COCO and Flickr30k retrieval (5 captions per
image, the Karpathy test splits).

  python -m launch.eval --checkpoint PATH --suite configs/evals/standard.py

Where the prepared copies are:
- TFDS datasets (`tfds build NAME --file_format=array_record`) under $TFDS_DATA_DIR
  (default ~/tensorflow_datasets), or under data_dir when the config sets one;
- $VLM_JAX_EVAL_DIR (default ~/eval_data): imagenet/val (the validation images in class folders,
  an alternative to TFDS's imagenet2012) and flickr30k/test-*.array_record (our shards, made
  with `launch.convert` from the Karpathy split's captions).
The sets not found are listed with the reason; the others are evaluated.
"""
import os

import ml_collections

from vlm_jax.config import eval_dataset

EVAL_DIR = os.path.expanduser(os.environ.get("VLM_JAX_EVAL_DIR", "~/eval_data"))


def get_config():
    s = ml_collections.ConfigDict()
    d = s.datasets = ml_collections.ConfigDict()
    # TFDS names its ImageNet classes by WordNet id: CLIP's names replace them.
    d.imagenet1k = eval_dataset(kind="tfds", path="imagenet2012", split="validation",
                                class_names="imagenet1k", templates="imagenet1k")
    d.imagenet1k_folder = eval_dataset(kind="folder", path=os.path.join(EVAL_DIR, "imagenet/val"),
                                       class_names="imagenet1k", templates="imagenet1k")
    d.cifar10 = eval_dataset(kind="tfds", path="cifar10", class_names="cifar10",
                             templates="cifar")
    d.cifar100 = eval_dataset(kind="tfds", path="cifar100", class_names="cifar100",
                              templates="cifar")
    d.food101 = eval_dataset(kind="tfds", path="food101", split="validation")
    d.stl10 = eval_dataset(kind="tfds", path="stl10")
    d.pets = eval_dataset(kind="tfds", path="oxford_iiit_pet")
    d.dtd = eval_dataset(kind="tfds", path="dtd")
    d.coco = eval_dataset(kind="tfds", path="coco_captions", split="test",
                          caption_key="captions/text", label_key="")
    d.flickr30k = eval_dataset(kind="array_record",
                               path=os.path.join(EVAL_DIR, "flickr30k/test-*.array_record"),
                               label_key="")
    s.zeroshot = ("imagenet1k", "imagenet1k_folder", "cifar10", "cifar100", "food101", "stl10",
                  "pets", "dtd")
    s.retrieval = ("coco", "flickr30k")
    s.linear_probe = ("cifar10", "cifar100", "food101", "pets", "dtd")
    return s
