"""The Lightning internals luna leans on, named here: if a Lightning release changes one of them,
this file fails first, with the member's name, instead of a checkpoint quietly not being written.

luna's RunCheckpoint (``luna/callbacks/checkpoint.py``) writes ``last.ckpt`` after every epoch and
at the true step of a SIGTERM, which Lightning's public ``ModelCheckpoint`` API cannot do; it uses
the four private members below. The learning-rate finder silences the sweep's own tqdm bar (the
module global ``tqdm`` of ``pytorch_lightning.tuner.lr_finder``) when the run has no progress bar.
``pyproject.toml`` pins pytorch-lightning to the releases these tests ran on.
"""

import inspect

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from luna.callbacks.checkpoint import RunCheckpoint


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_private_modelcheckpoint_members_runcheckpoint_uses_are_there():
    assert parameters(ModelCheckpoint._should_save_on_train_epoch_end) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]
    checkpoint = RunCheckpoint(dirpath=".")
    assert checkpoint._last_global_step_saved == 0  # set by Lightning on every save: luna reads it


def test_the_public_hooks_the_cli_overrides_have_their_signatures():
    assert parameters(LightningCLI.parse_arguments) == ["self", "parser", "args"]
    assert parameters(LightningCLI.instantiate_trainer) == ["self", "kwargs"]
    assert "trainer_defaults" in parameters(LightningCLI.__init__)
    # luna's before_fit/validate/test/predict check --ckpt_path: Lightning must still call them by that name
    assert 'f"before_{subcommand}"' in inspect.getsource(LightningCLI._run_subcommand)
    assert pl.__version__.startswith("2.6."), f"tested with pytorch-lightning 2.6, found {pl.__version__}"


def test_the_lr_finder_sweep_draws_its_bar_with_the_module_global_tqdm():
    from pytorch_lightning.tuner import lr_finder

    assert callable(lr_finder.tqdm) and "tqdm(desc=" in inspect.getsource(
        lr_finder._LRCallback.on_train_batch_start
    )


def test_the_lr_finder_exits_fit_after_its_sweep_through_early_exit():
    from pytorch_lightning.callbacks import LearningRateFinder

    # luna's LearningRateReport sets _early_exit: the sweep is the whole run (no public switch for it)
    assert "if self._early_exit:" in inspect.getsource(LearningRateFinder.lr_find)


def test_argparse_keeps_the_option_lists_the_help_reads():
    """luna's --help condenses Lightning's sections by walking argparse's action groups; argparse has
    no public API to list a parser's options (``luna/cli/parser.py``)."""
    import argparse

    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("section")
    action = group.add_argument("--section.key")
    assert group in parser._action_groups and action in group._group_actions and action in parser._actions
