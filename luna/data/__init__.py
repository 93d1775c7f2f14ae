"""The generic core: crop tables, volumes, the crop cache, splits, datasets, samplers and the DataModule."""
