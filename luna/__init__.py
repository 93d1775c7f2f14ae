"""luna: a PyTorch Lightning template for 3D medical imaging, built on LUNA16: from a CT to its findings.

The packages, in the order data flows through them (``README.md``, "Architecture", draws the map):

* ``luna.io``: files written atomically, CSV columns read with errors that name the line.
* ``luna.data``: the generic core. A ``CropSource`` turns a dataset's files into a ``CropTable``
  of (image, centre, label, group, fold); the crop cache, splits, samplers and the
  ``CropDataModule`` work on that table only.
* ``luna.luna16``: LUNA16, the worked dataset: release layout, candidates, its sources and
  DataModules, its phantom, and the scoring of its submissions (FROC/CPM files and report).
* ``luna.points``: a CSV of points in any volumes, the template's second dataset.
* ``luna.segmentation``: the detection stage: volume store, patches, the segmentation module and
  the candidates grouped from its output.
* ``luna.models``: networks (the book's LunaModel).
* ``luna.training``: the classification LightningModule, augmentation, fine-tuning.
* ``luna.metrics``: torchmetrics of an evaluation, exact under DDP, and their figures.
* ``luna.evaluation``: pure scoring (FROC, CPM) and the FROC figure.
* ``luna.callbacks``: what watches a run (checkpoints, figures, predictions, console, LR finder).
* ``luna.experiments``: sweeps, seed repeats and the cross-validation.
* ``luna.inference``: exported bundles and what runs them without Lightning (``luna.infer``).
* ``luna.cli``: the commands, thin: ``luna.fit``, ``luna.prepare``, ``luna.evaluate``, ``luna.crossval``,
  ``luna.tune``, ``luna.detect``, ``luna.export``, ``luna.infer``, ``luna.phantom``.
"""
