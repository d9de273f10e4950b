"""The embedded default task: the digits data set (`data_digits`, ``hybrid-data digits``) and
``hybrid-demo`` (`cli`), which trains a small hybrid and its attention-only twin on it and
reports accuracy at and far beyond the training resolution, with the prefill time."""
