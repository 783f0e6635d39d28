"""Input pipelines: record files, tokenizers, built-in datasets and Grain pipelines."""
