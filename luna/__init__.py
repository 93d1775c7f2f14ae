"""luna: a PyTorch Lightning template for 3D medical-image classification, built on LUNA16.

The packages, in the order data flows through them:

* ``luna.data``: the generic core. A ``CropSource`` turns a dataset's files into a ``CropTable``
  of (image, centre, label, group, fold); the crop cache, splits, samplers and the
  ``CropDataModule`` work on that table only.
* ``luna.luna16``: LUNA16, the worked dataset: release layout, candidates, its sources and
  DataModules, its phantom, and the scoring of its submissions (FROC/CPM files and report).
* ``luna.points``: a CSV of points in any volumes, the template's second dataset.
* ``luna.models``: networks (the book's LunaModel).
* ``luna.training``: the LightningModule, augmentation, fine-tuning.
* ``luna.metrics``: torchmetrics of an evaluation, exact under DDP.
* ``luna.evaluation``: pure scoring (FROC, CPM) and the figures of an evaluation.
* ``luna.callbacks``: what watches a run (checkpoints, figures, predictions, console, LR finder).
* ``luna.cli``: the commands (``python -m luna.fit``, ``luna.evaluate``, ``luna.crossval``).
"""
