"""LUNA16, the worked dataset: its release, candidates, sources, DataModules, phantom and scoring."""
