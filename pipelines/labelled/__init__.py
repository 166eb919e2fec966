"""Labelled sets built here (no downloads) to train and evaluate the PII and toxicity filters.

* :mod:`pipelines.labelled.sentences` -- real English sentences from the stdlib's docstrings.
* :mod:`pipelines.labelled.pii_data` -- Faker values planted into those sentences, plus hard
  negatives (versions, dates, UUIDs, ISBNs, private IPs, invalid card numbers, ...).
* :mod:`pipelines.labelled.toxicity_data` -- toxic and clean sentences, split into disjoint train
  and eval sets; :mod:`pipelines.labelled.train_toxicity` fits the classifier on the train set.
"""
