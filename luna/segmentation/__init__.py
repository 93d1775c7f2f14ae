"""The segmentation stage of detection: from a scan to the voxels of its nodules, and from those to
candidates.

The flow, one module each: a ``VolumeSource`` names the scans and their findings (``sources``);
``masks`` draws a nodule's mask from its centre and diameter; the volume store (``store``) keeps
each scan's voxels and mask once, resampled and checked; ``patches`` serves training patches and
whole validation scans; ``module`` trains a segmentation network on them; ``inference`` turns a
whole volume into a probability map (MONAI's sliding window); ``candidates`` groups that map into
candidates with centres in millimetres. ``luna.detection`` puts this stage and the classifier
together.
"""
