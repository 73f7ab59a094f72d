"""Serving: predictors on raw or tokenized text, torch-free where a model is exported.

* ``structkd.serve.text``: tokenization and sentence splitting with character offsets (syntok);
* ``structkd.serve.results``: what a predictor returns (``Document``, ``Sentence``, ``Token``,
  ``Entity``) and its JSON form;
* ``structkd.serve.predictor``: the ``Predictor`` base class (input normalization, length-sorted
  batches, thread count) that each task's predictors extend;
* ``structkd.serve.manifest``: the exported model directory (``export.json``);
  ``structkd.serve.onnx``: the onnxruntime session of one;
* ``structkd.serve.chain`` and ``structkd.serve.trees``: decoding in numpy for exported models
  (linear chains: Viterbi, forward-backward marginals, span probabilities; dependency labels:
  label decoding and tree repair).

Nothing here imports torch: an exported model is served with numpy and onnxruntime only (the
``serve`` extra). ``structkd.load`` (``structkd.api.load``) is the entry point.
"""
