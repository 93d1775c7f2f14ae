"""From a CT to its findings: the segmentation stage finds candidates, the classifier sorts them,
a malignancy classifier grades them (``pipeline``), with each network loaded from its checkpoint
(``networks``) and the findings written as a LUNA16 submission (``output``)."""
